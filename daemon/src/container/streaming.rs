//! Exec, Attach and PortForward requests: checked here, then answered with a single-use URL on
//! the streaming server where the session itself runs (`stream`).

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::stream::{AttachReq, ExecReq, Pending};

use super::CtrState;

impl Runtime {
    pub fn exec_url(&self, req: ExecReq) -> Result<String> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument(
                "exec command must not be empty".into(),
            ));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout and stderr must be set".into(),
            ));
        }
        if req.tty && req.stderr {
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be set (a terminal merges them)".into(),
            ));
        }
        let rec = self.container(&req.container_id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                req.container_id
            )));
        }
        self.streaming.url(Pending::Exec(req))
    }

    pub fn attach_url(&self, req: AttachReq) -> Result<String> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout and stderr must be set".into(),
            ));
        }
        if req.tty && req.stderr {
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be set (a terminal merges them)".into(),
            ));
        }
        let rec = self.container(&req.container_id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                req.container_id
            )));
        }
        self.streaming.url(Pending::Attach(req))
    }

    pub async fn port_forward_url(&self, pod_id: &str) -> Result<String> {
        let pod = self.pod_live(pod_id).await?;
        if pod.state != crate::pod::PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        self.streaming.url(Pending::PortForward {
            pod_id: pod_id.to_string(),
        })
    }
}
