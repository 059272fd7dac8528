//! Error accounting: every CRI error (and every wrong answer) a churner or pull loop
//! sees is recorded with its time and pod, and classified once its iteration is over:
//! explained by a fault the harness injected, or a violation of its own kind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One error or wrong answer, as seen.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the caller saw it (ns since the epoch).
    pub at: i64,
    /// The CRI call (or check) it came from, e.g. "ExecSync".
    pub op: &'static str,
    /// The pod it concerned ("" when none: pulls).
    pub pod: String,
    /// The gRPC status code; None for a wrong answer to a call that succeeded.
    pub code: Option<tonic::Code>,
    pub msg: String,
}

/// Shared by every churner and pull loop of a run: what they saw, and the violations
/// that no fault excuses (a fault's own checks failing).
#[derive(Clone, Default)]
pub struct Errors(Arc<Mutex<Log>>);

/// (what was seen, (kind, detail) of violations whatever was injected).
type Log = (Vec<Seen>, Vec<(String, String)>);

impl Errors {
    pub fn status(&self, op: &'static str, pod: &str, s: &tonic::Status) {
        self.push(op, pod, Some(s.code()), s.message().to_string());
    }

    /// A wrong answer (a call that succeeded with the wrong content).
    pub fn wrong(&self, op: &'static str, pod: &str, msg: String) {
        self.push(op, pod, None, msg);
    }

    pub fn push(&self, op: &'static str, pod: &str, code: Option<tonic::Code>, msg: String) {
        self.0.lock().unwrap().0.push(Seen {
            at: crate::now_ns(),
            op,
            pod: pod.to_string(),
            code,
            msg,
        });
    }

    /// A violation of `kind` whatever was injected.
    pub fn violation(&self, kind: &str, detail: String) {
        self.0.lock().unwrap().1.push((kind.to_string(), detail));
    }

    /// Everything seen so far (the iteration's), leaving the log empty.
    pub fn take(&self) -> (Vec<Seen>, Vec<(String, String)>) {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What the harness injected during one iteration.
#[derive(Default)]
pub struct Injected {
    /// When berthd was killed (ns), if it was.
    pub kill_at: Option<i64>,
    /// A berthd failpoint was armed: it aborts at a moment the harness does not know, so
    /// a transport-level error (the connection broke or was refused) is its doing.
    pub daemon_failpoint: bool,
    /// A shim failpoint was armed: new pods' shims die in create or start, and any call
    /// on a churn pod may fail because of it.
    pub shim_failpoint: bool,
    /// Pods whose shim the harness killed, and when.
    pub shim_killed: BTreeMap<String, i64>,
}

impl Injected {
    /// The injected fault that explains `e`, or None (a violation).
    pub fn explain(&self, e: &Seen) -> Option<&'static str> {
        if self.shim_killed.get(&e.pod).is_some_and(|at| e.at >= *at) {
            return Some("shim-kill");
        }
        // Wrong answers are never explained by the daemon's death: a call that
        // succeeded must have said the truth.
        let code = e.code?;
        if self.kill_at.is_some_and(|at| e.at >= at) {
            return Some("kill");
        }
        if self.shim_failpoint && !e.pod.is_empty() {
            return Some("shim failpoint");
        }
        if self.daemon_failpoint
            && matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            )
        {
            return Some("failpoint");
        }
        None
    }
}

/// The violation kind of an unexplained error: "churn <op> <code>" or "wrong <op>".
pub fn kind(e: &Seen) -> String {
    match e.code {
        Some(c) => format!("churn {} {c:?}", e.op),
        None => format!("wrong {}", e.op),
    }
}

/// Classifies what the churners and the pull loop saw in this iteration: explained by an
/// injected fault (counted by cause) or a violation of its own kind.
pub fn account(
    errors: &Errors,
    killable: &crate::fault_shim_kill::Killable,
    kill_at: Option<i64>,
    failpoint: Option<&str>,
    report: &mut crate::report::Report,
) {
    let w = Injected {
        kill_at,
        daemon_failpoint: failpoint.is_some_and(|f| !f.starts_with("shim.")),
        shim_failpoint: failpoint.is_some_and(|f| f.starts_with("shim.")),
        shim_killed: killable.killed(),
    };
    let (seen, direct) = errors.take();
    for e in seen {
        match w.explain(&e) {
            Some(cause) => *report.injected.entry(cause.to_string()).or_default() += 1,
            None => report.add(
                &kind(&e),
                format!("pod {}: {} ({:?})", e.pod, e.msg, e.code),
            ),
        }
    }
    for (kind, detail) in direct {
        report.add(&kind, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at: i64, pod: &str, code: Option<tonic::Code>) -> Seen {
        Seen {
            at,
            op: "ExecSync",
            pod: pod.into(),
            code,
            msg: String::new(),
        }
    }

    #[test]
    fn explains_only_what_was_injected() {
        let mut w = Injected {
            kill_at: Some(100),
            ..Default::default()
        };
        w.shim_killed.insert("p1".into(), 50);
        let un = Some(tonic::Code::Unavailable);
        // Before the kill, on a pod whose shim lives: a violation.
        assert_eq!(w.explain(&seen(99, "p2", un)), None);
        assert_eq!(w.explain(&seen(100, "p2", un)), Some("kill"));
        // The killed shim's pod, from the kill on; not before.
        assert_eq!(
            w.explain(&seen(60, "p1", Some(tonic::Code::Internal))),
            Some("shim-kill")
        );
        assert_eq!(
            w.explain(&seen(40, "p1", Some(tonic::Code::Internal))),
            None
        );
        // A wrong answer is never the daemon kill's doing.
        assert_eq!(w.explain(&seen(200, "p2", None)), None);
        assert_eq!(w.explain(&seen(200, "p1", None)), Some("shim-kill"));
        let fp = Injected {
            daemon_failpoint: true,
            ..Default::default()
        };
        assert_eq!(fp.explain(&seen(1, "p", un)), Some("failpoint"));
        assert_eq!(fp.explain(&seen(1, "p", Some(tonic::Code::Internal))), None);
    }
}
