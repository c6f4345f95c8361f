//! Attribution of sockets to processes and containers (pid -> container; pods come later).

pub mod cgroup;
pub mod procs;
