//! Exec, Attach and PortForward requests: checked here, then answered with a single-use URL on
//! the streaming server where the session itself runs (`stream`).

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::stream::{AttachReq, ExecReq, Flags, Pending};

use super::CtrState;

impl Runtime {
    pub fn exec_url(&self, req: ExecReq) -> Result<String> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument(
                "exec command must not be empty".into(),
            ));
        }
        self.check_remote_command(&req.container_id, req.flags())?;
        self.streaming.url(Pending::Exec(req))
    }

    pub fn attach_url(&self, req: AttachReq) -> Result<String> {
        self.check_remote_command(&req.container_id, req.flags())?;
        self.streaming.url(Pending::Attach(req))
    }

    /// What Exec and Attach both require: a sensible set of streams (as kubelet's
    /// streaming server validates them) and a running container.
    fn check_remote_command(&self, container_id: &str, f: Flags) -> Result<()> {
        if !(f.stdin || f.stdout || f.stderr) {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout and stderr must be set".into(),
            ));
        }
        if f.tty && f.stderr {
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be set (a terminal merges them)".into(),
            ));
        }
        let rec = self.container(container_id)?;
        if rec.state != CtrState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {container_id} is not running"
            )));
        }
        Ok(())
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
