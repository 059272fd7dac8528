//! berth-pause: the pod infra process. It holds the pod's namespaces, reaps zombies as the
//! pod's PID 1, and exits 0 on SIGINT/SIGTERM. No image is needed: it is a freestanding
//! static binary (no libc, four system calls), copied into a one-file rootfs by berthd.
//!
//! Why no signal handlers: handlers would need a sigreturn trampoline. Instead every
//! signal is blocked and taken synchronously with rt_sigtimedwait.

// `test = false` in Cargo.toml keeps it out of `cargo test` (its link arguments would
// break a harness); clippy's all-targets check still compiles it with std, hence the gates.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("berth-pause supports x86_64 and aarch64");

const SIGINT: usize = 2;
const SIGTERM: usize = 15;
const SIGCHLD: usize = 17;
const SIG_BLOCK: usize = 0;
const WNOHANG: usize = 1;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const RT_SIGPROCMASK: usize = 14;
    pub const WAIT4: usize = 61;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const EXIT_GROUP: usize = 231;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const RT_SIGPROCMASK: usize = 135;
    pub const WAIT4: usize = 260;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const EXIT_GROUP: usize = 94;
}

/// SAFETY contract for callers: the arguments must be valid for syscall `n`.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux syscall ABI; rcx and r11 are clobbered by `syscall`.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
            in("rdx") c, in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux syscall ABI.
    unsafe {
        core::arch::asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b,
            in("x2") c, in("x3") d, options(nostack));
    }
    ret
}

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes a plain integer.
        unsafe { syscall4(nr::EXIT_GROUP, code, 0, 0, 0) };
    }
}

fn bit(sig: usize) -> u64 {
    1 << (sig - 1)
}

#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let set: u64 = bit(SIGINT) | bit(SIGTERM) | bit(SIGCHLD);
    // SAFETY: a valid 8-byte sigset pointer and its size.
    if unsafe {
        syscall4(
            nr::RT_SIGPROCMASK,
            SIG_BLOCK,
            &set as *const u64 as usize,
            0,
            8,
        )
    } < 0
    {
        exit(1);
    }
    loop {
        // SAFETY: a valid set; a NULL siginfo and a NULL timeout (wait forever) are allowed.
        let sig = unsafe { syscall4(nr::RT_SIGTIMEDWAIT, &set as *const u64 as usize, 0, 0, 8) };
        match sig as usize {
            SIGINT | SIGTERM => exit(0),
            SIGCHLD => {
                // Reap every zombie: signals coalesce, so one SIGCHLD may mean many exits.
                // SAFETY: wait4(-1, NULL, WNOHANG, NULL).
                while unsafe { syscall4(nr::WAIT4, usize::MAX, 0, WNOHANG, 0) } > 0 {}
            }
            _ => {}
        }
    }
}

/// The precompiled `core` refers to this symbol from its unwind tables; nothing here
/// unwinds (panics exit), so it is never called.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(2)
}
