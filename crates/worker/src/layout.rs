//! Where things are inside a sandbox: the paths that the worker binds, the runtime imports and
//! installer jobs use, named once. The Python runtime (`runtime/kindling_runtime.py`) knows the
//! same paths; change both together.

/// A function's code (read-only), and the working directory of its instances.
pub const HANDLER: &str = "/handler";
/// Kindling's runtime directory (read-only): the Python runtime, uv, CA certificates.
pub const RUNTIME: &str = "/kindling";
/// The package store, showing only the packages a sandbox may see.
pub const PACKAGES: &str = "/packages";
/// The sandbox's writable, size-limited tmpfs (also `HOME`).
pub const TMP: &str = "/tmp";
/// procfs.
pub const PROC: &str = "/proc";
/// The minimal /dev.
pub const DEV: &str = "/dev";
/// Where networked sandboxes find their name servers.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// `PATH` of instances, zygotes and jobs.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Directory of the object storage socket, under [`RUNTIME`] inside a sandbox and under the
/// worker root on the host.
pub const STORAGE_SOCKET_DIR: &str = "storage-socket";
/// File name of the object storage socket.
pub const STORAGE_SOCKET_NAME: &str = "storage.sock";
/// The object storage socket inside a sandbox.
pub const STORAGE_SOCKET: &str = "/kindling/storage-socket/storage.sock";
/// Directory of the NoSQL socket, under [`RUNTIME`] inside a sandbox and under the worker root
/// on the host.
pub const NOSQL_SOCKET_DIR: &str = "nosql-socket";
/// File name of the NoSQL socket.
pub const NOSQL_SOCKET_NAME: &str = "nosql.sock";
/// The NoSQL socket inside a sandbox.
pub const NOSQL_SOCKET: &str = "/kindling/nosql-socket/nosql.sock";
/// The Python statement every interpreter Kindling starts runs first (`-c`), before calling
/// `kindling_runtime.<entry>()`.
pub const RUNTIME_IMPORT: &str =
    "import sys; sys.path.insert(0, '/kindling'); import kindling_runtime";

/// The files of package `key` (`<name>==<version>`) inside a sandbox.
pub fn package_files(key: &str) -> String {
    format!("{PACKAGES}/{key}/files")
}

/// The directory of package `key` inside a sandbox.
pub fn package_dir(key: &str) -> String {
    format!("{PACKAGES}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_sockets_lie_in_the_runtime_directory() {
        assert_eq!(
            STORAGE_SOCKET,
            format!("{RUNTIME}/{STORAGE_SOCKET_DIR}/{STORAGE_SOCKET_NAME}")
        );
        assert_eq!(
            NOSQL_SOCKET,
            format!("{RUNTIME}/{NOSQL_SOCKET_DIR}/{NOSQL_SOCKET_NAME}")
        );
        assert_eq!(package_files("six==1.16.0"), "/packages/six==1.16.0/files");
    }
}
