//! A bandwidth-limiting TCP proxy on 127.0.0.1 in front of a local port (the registry),
//! so that a pull lasts long enough to be interrupted.

use anyhow::Result;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on 127.0.0.1 in front of another local port that limits the download
/// direction to a settable rate (0 = unlimited): makes a big pull last long enough to be
/// interrupted at a chosen point. Stopped, and its connections cut, on drop.
pub struct SlowProxy {
    pub port: u16,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    pub fn start(upstream: u16, bytes_per_sec: u64) -> Result<SlowProxy> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Default::default();
        let (r, s, cs) = (rate.clone(), stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let (down, _) = match l.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let clones = (
                    down.try_clone(),
                    up.try_clone(),
                    down.try_clone(),
                    up.try_clone(),
                );
                let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = clones else {
                    continue;
                };
                cs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend([d3, u3]);
                std::thread::spawn(move || pump(down, up, None));
                let r = r.clone();
                std::thread::spawn(move || pump(u2, d2, Some(r)));
            }
        });
        Ok(SlowProxy {
            port,
            rate,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let bps = rate.as_ref().map_or(0, |r| r.load(Ordering::SeqCst));
        if bps > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / bps as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
