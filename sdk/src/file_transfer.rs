//! File transfer through a bound FTP component. The host connects to the component's
//! own server (explicit FTPS unless the component says otherwise), logs in and streams
//! the file between the server and the step's workspace, so neither the password nor
//! the file's bytes pass through the module. Remote paths are relative to the
//! component's `base_dir` and may not leave it.
//!
//! ```no_run
//! use flow8_sdk::file_transfer::{download, upload};
//!
//! # fn run() -> Result<(), flow8_sdk::Error> {
//! // `ftp` is a component binding of provider `ftp` in the module's manifest:
//! // `Credential::component("ftp", "ftp")`.
//! let up = upload("ftp", "/tmp/report.csv", "reports/2026-04/report.csv", true)?;
//! flow8_sdk::log::info(&format!("stored {} bytes as {}", up.size, up.remote_path));
//! let down = download("ftp", "inbox/orders.csv", "/tmp/orders.csv")?;
//! flow8_sdk::log::info(&format!("fetched {} bytes", down.size));
//! # Ok(())
//! # }
//! ```
//!
//! Errors: a refused login and permission denied are
//! [`Error::AccessDenied`](crate::Error); no such file, or a path outside the base
//! directory or the workspace, [`Error::InvalidInput`](crate::Error); a full disk on
//! the server [`Error::Upstream`](crate::Error) with its reply code (452, 552); an
//! unreachable server [`Error::Network`](crate::Error).

use crate::__private::bindings::flow8::integration::file_transfer as wit;
use crate::Error;

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// The remote path as the server knows it (base directory included).
    pub remote_path: String,
    /// The workspace path.
    pub file_path: String,
    /// Bytes transferred.
    pub size: u64,
}

fn from_wit(t: wit::Transferred) -> Transferred {
    Transferred {
        remote_path: t.remote_path,
        file_path: t.file_path,
        size: t.size,
    }
}

/// Upload workspace file `file_path` to `remote_path` through binding `credential`,
/// creating missing remote directories first when `create_dirs`.
pub fn upload(
    credential: &str,
    file_path: &str,
    remote_path: &str,
    create_dirs: bool,
) -> Result<Transferred, Error> {
    wit::upload(&wit::UploadRequest {
        credential: credential.into(),
        file_path: file_path.into(),
        remote_path: remote_path.into(),
        create_dirs,
    })
    .map(from_wit)
    .map_err(Error::from_wit)
}

/// Download `remote_path` into workspace file `file_path` (replaced if it exists) through
/// binding `credential`.
pub fn download(
    credential: &str,
    remote_path: &str,
    file_path: &str,
) -> Result<Transferred, Error> {
    wit::download(&wit::DownloadRequest {
        credential: credential.into(),
        remote_path: remote_path.into(),
        file_path: file_path.into(),
    })
    .map(from_wit)
    .map_err(Error::from_wit)
}
