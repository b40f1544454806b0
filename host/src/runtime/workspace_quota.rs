//! Per-step budgets for the step's workspace: bytes written and files created.
//!
//! wasmtime-wasi bounds what it can: the number of handles a step holds at once (open
//! files and directories, streams, pollables) is the capacity of the store's
//! `ResourceTable` (`ResourceTable::set_max_capacity`, set per step from
//! `StepLimits::open_files`), and a full table traps with `ResourceTableError::Full`.
//! It has no notion of disk quotas: a preopen is a `cap-std` directory that the guest
//! may fill without limit (512 MiB were written freely). OS quotas need privileges a
//! host cannot assume (a mount per step, project quotas), so the smallest sound design
//! is to shadow, in the linker, the few `wasi:filesystem/types` functions that can
//! grow the disk, and to wrap the output streams files hand out:
//!
//! - bytes: `descriptor.write`, every write through `write-via-stream` and
//!   `append-via-stream` streams (the wrapper counts `write` and `write-zeroes`), and
//!   `set-size` past a file's current size. Every byte written counts, overwrites
//!   included, and deleting a file gives nothing back: a budget of writing, not of
//!   occupancy, so it needs no scan of the workspace and no syscall per write.
//! - files: `open-at` that creates a file, `create-directory-at`, `symlink-at`,
//!   `link-at`.
//!
//! Everything else is wasmtime-wasi's own implementation, called unchanged. Past a
//! budget the call traps with [`WorkspaceLimitHit`], which the step reports as
//! `limit_exceeded` (as the memory cap does).

use super::sandbox::StepState;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, Host, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynOutputStream, FsError, OutputStream, Pollable, StreamError};

/// The `wasi:filesystem/types` instance wasmtime-wasi defines (its WIT's version; a
/// guest importing an older 0.2.x is linked to it by semver). If wasmtime-wasi moves
/// on, `add_to_linker` fails at start rather than leaving the budgets off.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// A workspace budget was spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceLimitHit {
    /// Bytes written.
    #[error("the module wrote more than {limit} bytes to its workspace; this step allows {limit}")]
    Bytes {
        /// The step's budget.
        limit: u64,
    },
    /// Files, directories and links created.
    #[error(
        "the module created more than {limit} files, directories and links in its workspace; this step allows {limit}"
    )]
    Files {
        /// The step's budget.
        limit: u64,
    },
}

/// What is left of one step's workspace budgets. Shared with the streams it wraps.
#[derive(Debug)]
pub struct WorkspaceQuota {
    byte_limit: u64,
    file_limit: u64,
    bytes_used: AtomicU64,
    files_used: AtomicU64,
}

impl WorkspaceQuota {
    /// Budgets of `bytes` written and `files` created.
    pub fn new(bytes: u64, files: u64) -> Arc<WorkspaceQuota> {
        Arc::new(WorkspaceQuota {
            byte_limit: bytes,
            file_limit: files,
            bytes_used: AtomicU64::new(0),
            files_used: AtomicU64::new(0),
        })
    }

    /// Spend `n` bytes, or refuse (spending nothing) when they do not fit.
    pub fn spend_bytes(&self, n: u64) -> Result<(), WorkspaceLimitHit> {
        spend(&self.bytes_used, self.byte_limit, n).map_err(|()| WorkspaceLimitHit::Bytes {
            limit: self.byte_limit,
        })
    }

    /// Spend one file, or refuse.
    pub fn spend_file(&self) -> Result<(), WorkspaceLimitHit> {
        spend(&self.files_used, self.file_limit, 1).map_err(|()| WorkspaceLimitHit::Files {
            limit: self.file_limit,
        })
    }

    /// Bytes written so far.
    pub fn bytes_used(&self) -> u64 {
        self.bytes_used.load(Ordering::Relaxed)
    }

    /// Files created so far.
    pub fn files_used(&self) -> u64 {
        self.files_used.load(Ordering::Relaxed)
    }
}

fn spend(used: &AtomicU64, limit: u64, n: u64) -> Result<(), ()> {
    used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
        u.checked_add(n).filter(|t| *t <= limit)
    })
    .map(|_| ())
    .map_err(|_| ())
}

/// An output stream of a workspace file that spends the step's byte budget.
struct QuotaStream {
    inner: DynOutputStream,
    quota: Arc<WorkspaceQuota>,
}

fn over(hit: WorkspaceLimitHit) -> StreamError {
    StreamError::Trap(hit.into())
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.quota.spend_bytes(bytes.len() as u64).map_err(over)?;
        self.inner.write(bytes)
    }
    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        self.inner.flush()
    }
    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        self.inner.check_write()
    }
    fn write_zeroes(&mut self, nelem: usize) -> wasmtime_wasi::p2::StreamResult<()> {
        self.quota.spend_bytes(nelem as u64).map_err(over)?;
        self.inner.write_zeroes(nelem)
    }
    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

type FsOutcome<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

/// wasmtime-wasi's answer as the guest sees it: an error code, or a trap.
fn lower<T>(store: &mut StoreContextMut<'_, StepState>, r: Result<T, FsError>) -> FsOutcome<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(store.data_mut().filesystem().convert_error_code(e)?),)),
    }
}

/// Replace the stream at `res` with one that spends the step's byte budget.
fn wrap_stream(
    store: &mut StoreContextMut<'_, StepState>,
    res: &Resource<DynOutputStream>,
) -> wasmtime::Result<()> {
    let quota = store.data().workspace_quota.clone();
    let slot = store.data_mut().table.get_mut(res)?;
    let inner = std::mem::replace(slot, Box::new(wasmtime_wasi::p2::pipe::SinkOutputStream));
    *slot = Box::new(QuotaStream { inner, quota });
    Ok(())
}

/// Shadow the filesystem functions that grow the workspace (see the module docs).
/// Call after `wasmtime_wasi::p2::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
    // Shadowing a function nobody defined would define it and leave the real one (of
    // another version) unbudgeted: make sure wasmtime-wasi's is there.
    let mut probe = linker.clone();
    probe.allow_shadowing(false);
    if probe
        .instance(FILESYSTEM_TYPES)?
        .func_wrap("[method]descriptor.write", |_, (): ()| Ok(()))
        .is_ok()
    {
        wasmtime::bail!(
            "wasmtime-wasi does not define `{FILESYSTEM_TYPES}`: update FILESYSTEM_TYPES"
        );
    }
    drop(probe);
    linker.allow_shadowing(true);
    let mut inst = linker.instance(FILESYSTEM_TYPES)?;

    inst.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, StepState>,
         (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                store.data().workspace_quota.spend_bytes(buf.len() as u64)?;
                let r = store.data_mut().filesystem().write(fd, buf, offset).await;
                lower(&mut store, r)
            })
        },
    )?;

    inst.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, StepState>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let fd2 = Resource::<Descriptor>::new_borrow(fd.rep());
                let current = match store.data_mut().filesystem().stat(fd2).await {
                    Ok(stat) => stat.size,
                    Err(e) => return lower(&mut store, Err(e)),
                };
                if size > current {
                    store.data().workspace_quota.spend_bytes(size - current)?;
                }
                let r = store.data_mut().filesystem().set_size(fd, size).await;
                lower(&mut store, r)
            })
        },
    )?;

    inst.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, StepState>, (fd, offset): (Resource<Descriptor>, u64)| {
            let r = store.data_mut().filesystem().write_via_stream(fd, offset);
            let out = lower(&mut store, r)?;
            if let (Ok(stream),) = &out {
                wrap_stream(&mut store, stream)?;
            }
            Ok(out)
        },
    )?;

    inst.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, StepState>, (fd,): (Resource<Descriptor>,)| {
            let r = store.data_mut().filesystem().append_via_stream(fd);
            let out = lower(&mut store, r)?;
            if let (Ok(stream),) = &out {
                wrap_stream(&mut store, stream)?;
            }
            Ok(out)
        },
    )?;

    inst.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, StepState>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                // Only an open that may create a file, of a path not there yet,
                // spends a file (a stat first: opens are rare next to writes).
                let creates = oflags.contains(OpenFlags::CREATE) && {
                    let dir = Resource::<Descriptor>::new_borrow(fd.rep());
                    store
                        .data_mut()
                        .filesystem()
                        .stat_at(dir, path_flags, path.clone())
                        .await
                        .is_err()
                };
                if creates {
                    store.data().workspace_quota.spend_file()?;
                }
                let r = store
                    .data_mut()
                    .filesystem()
                    .open_at(fd, path_flags, path, oflags, flags)
                    .await;
                lower(&mut store, r)
            })
        },
    )?;

    inst.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, StepState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                store.data().workspace_quota.spend_file()?;
                let r = store
                    .data_mut()
                    .filesystem()
                    .create_directory_at(fd, path)
                    .await;
                lower(&mut store, r)
            })
        },
    )?;

    inst.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, StepState>,
         (fd, old_path, new_path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                store.data().workspace_quota.spend_file()?;
                let r = store
                    .data_mut()
                    .filesystem()
                    .symlink_at(fd, old_path, new_path)
                    .await;
                lower(&mut store, r)
            })
        },
    )?;

    inst.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, StepState>,
         (fd, old_flags, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                store.data().workspace_quota.spend_file()?;
                let r = store
                    .data_mut()
                    .filesystem()
                    .link_at(fd, old_flags, old_path, new_fd, new_path)
                    .await;
                lower(&mut store, r)
            })
        },
    )?;

    linker.allow_shadowing(false);
    Ok(())
}
