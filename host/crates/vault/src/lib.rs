//! Encryption of credentials at rest, stored in the flow8 shape `{"encrypted": true,
//! "nonce": ..., "ciphertext": ...}` plus the id of the master key that sealed it, so
//! keys can be rotated. Secret values and keys never print: their `Debug` says `***`.
//!
//! Every secret is sealed for one place: a [`SealContext`] (company, record kind,
//! record id, field) is the associated data of an XChaCha20-Poly1305 AEAD (RFC 8439's
//! construction with a 24-byte nonce), marked `"alg": "xchacha20poly1305"` in the
//! envelope. An envelope copied to another record, another company or another field
//! does not open there ([`VaultError::WrongRecord`]), so write access to the store is not
//! a way to hand one tenant's secret to another. Envelopes from before the binding
//! (NaCl secretbox, XSalsa20-Poly1305, no `alg`) still open anywhere; `keys rotate`
//! re-seals them into the bound form ([`Vault::reseal`]).
//!
//! The master key comes from `FLOW8_MASTER_KEY` (64 hex characters or base64 of 32
//! bytes) or, when that is unset, from `<data-dir>/master.key`, created on first use
//! (see [`MasterKey::load`]). A store keeps [`Vault::check_value`] so a host started
//! with another key fails at start ([`VaultError::WrongMasterKey`]) instead of on every
//! secret it reads.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::XChaCha20Poly1305;
use crypto_secretbox::aead::{Aead, KeyInit, Payload};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The environment variable holding the master key.
pub const MASTER_KEY_ENV: &str = "FLOW8_MASTER_KEY";

/// The key file's name inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Nonce length: 24 bytes for both ciphers (XSalsa20 and XChaCha20).
const NONCE_LEN: usize = 24;
/// Poly1305 tag length: prepended to a secretbox ciphertext, appended to an
/// XChaCha20-Poly1305 one.
const TAG_LEN: usize = 16;

/// The kind of record a sealed secret lives in (part of its [`SealContext`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An API-key component (`components`); the field is the config field.
    Component,
    /// An OAuth link (`db_links`); the field is `access_token` or `refresh_token`.
    Link,
    /// A pending OAuth authorization (`oauth_states`, by its state hash).
    OAuthState,
    /// A host setting (`host_meta`, by its key), e.g. the key check value.
    HostMeta,
    /// A company's event endpoint (`event_endpoints`, by company); the field is
    /// `signing_secret`.
    EventEndpoint,
}

impl RecordKind {
    /// The name that goes into the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Component => "component",
            RecordKind::Link => "link",
            RecordKind::OAuthState => "oauth_state",
            RecordKind::HostMeta => "host_meta",
            RecordKind::EventEndpoint => "event_endpoint",
        }
    }
}

/// Where a sealed secret belongs: the company, the record (kind and id) and the field
/// that holds it. Sealing binds the envelope to it; opening needs the same context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// The owning company (empty for host-wide records).
    pub company: &'a str,
    /// The kind of record.
    pub kind: RecordKind,
    /// The record's id.
    pub record: &'a str,
    /// The field holding the envelope.
    pub field: &'a str,
}

impl SealContext<'_> {
    /// The AEAD's associated data: a version tag, then each part length-prefixed (u32,
    /// big-endian), so no two contexts share an encoding (`("ab", "c")` and
    /// `("a", "bc")` differ).
    fn associated_data(&self) -> Vec<u8> {
        let parts = [self.company, self.kind.as_str(), self.record, self.field];
        let mut ad = Vec::with_capacity(32 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
        ad.extend_from_slice(b"flow8-seal-v1");
        for part in parts {
            // Ids and field names are short; a part past 4 GiB cannot be in memory twice.
            ad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            ad.extend_from_slice(part.as_bytes());
        }
        ad
    }
}

impl std::fmt::Display for SealContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} of company `{}`, field `{}`",
            self.kind.as_str(),
            self.record,
            self.company,
            self.field
        )
    }
}

/// The cipher of an envelope (`alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Cipher {
    /// NaCl secretbox (XSalsa20-Poly1305), not bound to a record: envelopes sealed
    /// before the binding. Written as no `alg` at all.
    #[default]
    #[serde(rename = "secretbox")]
    Secretbox,
    /// XChaCha20-Poly1305 with the [`SealContext`] as associated data.
    #[serde(rename = "xchacha20poly1305")]
    XChaCha20Poly1305,
}

impl Cipher {
    fn is_secretbox(&self) -> bool {
        *self == Cipher::Secretbox
    }
}

/// Why a key could not be loaded or a secret not be opened. Never carries key or
/// plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The envelope names a key this host does not have.
    #[error(
        "this secret was encrypted with master key {key_id}, which this host does not have: is FLOW8_MASTER_KEY the key this data was written with?"
    )]
    UnknownKey {
        /// The envelope's key id.
        key_id: String,
    },
    /// Authentication failed: wrong key, or the ciphertext was altered.
    #[error("a secret failed authentication: it was altered, or sealed with a different key")]
    Tampered,
    /// A bound envelope did not open for the record it was read from: it was sealed
    /// for another company, record or field (copied or moved in the store), or altered.
    #[error(
        "a secret does not belong to this record ({context}): it was sealed for another company, record or field and moved or copied in the store, or altered"
    )]
    WrongRecord {
        /// Where it was read from (ids and field name, no secret).
        context: String,
    },
    /// The envelope is not the expected shape.
    #[error("encrypted value is malformed: {0}")]
    Malformed(String),
    /// The key material is not a 32-byte key.
    #[error("master key is not valid: {0}")]
    BadKey(String),
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but others may read it: refuse to use a key that may have
    /// leaked, rather than silently tightening it.
    #[error(
        "master key file {path} is accessible to other users (mode {mode:o}); run `chmod 600 {path}` if that was not the case for long, or rotate the key"
    )]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The host was started with another key than the one the store was written with.
    #[error(
        "the store was written with master key {expected_key_id}, but this host has key {got_key_id}: start it with the original FLOW8_MASTER_KEY (or key file)"
    )]
    WrongMasterKey {
        /// Key id recorded in the store.
        expected_key_id: String,
        /// Key id of the key in hand.
        got_key_id: String,
    },
}

/// A decrypted secret. Never printed; zeroed on drop; not `Serialize`, so it cannot
/// end up in a response or a document by accident.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Constant-time in the contents (secrets are compared against attacker input, e.g.
/// webhook signatures); only the length may leak.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Read from configuration (a client secret, a token, a store address with a password):
/// held as a `Secret` from the moment it is parsed, so no `Debug` of a configuration
/// prints it.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A 32-byte master key (zeroed on drop) and its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, ***)", self.id)
    }
}

impl MasterKey {
    fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let mut h = Sha256::new();
        h.update(b"flow8-master-key-id:");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        MasterKey {
            bytes: Zeroizing::new(bytes),
            id,
        }
    }

    /// A fresh random key (from the OS generator, via `rand`).
    pub fn generate() -> MasterKey {
        MasterKey::from_bytes(rand::random())
    }

    /// Parse 64 hex characters or standard base64 of 32 bytes (surrounding whitespace
    /// ignored). The error never repeats the text.
    pub fn parse(text: &str) -> Result<MasterKey, VaultError> {
        let text = text.trim();
        let shape = || {
            VaultError::BadKey(format!(
                "expected 64 hex characters or the standard base64 of 32 bytes, got {} characters",
                text.chars().count()
            ))
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| shape())?;
        } else {
            let decoded = Zeroizing::new(B64.decode(text).map_err(|_| shape())?);
            if decoded.len() != 32 {
                return Err(VaultError::BadKey(format!(
                    "it decodes to {} bytes; a master key is 32",
                    decoded.len()
                )));
            }
            bytes.copy_from_slice(&decoded);
        }
        Ok(MasterKey::from_bytes(*bytes))
    }

    /// The host's master key (also known as "from env or file"):
    ///
    /// 1. `FLOW8_MASTER_KEY`, when set and not empty, parsed with [`MasterKey::parse`];
    /// 2. else `<data_dir>/master.key` (hex). On first use the directory is created
    ///    (0700) and a new random key is written there (0600). The file appears
    ///    complete and at once (written aside, then hard-linked into place), so two
    ///    processes starting together agree on one key. An existing file that group or
    ///    others may access is refused ([`VaultError::InsecureKeyFile`]).
    pub fn load(data_dir: &Path) -> Result<MasterKey, VaultError> {
        let env = match std::env::var_os(MASTER_KEY_ENV) {
            None => None,
            Some(v) => Some(Zeroizing::new(v.into_string().map_err(|_| {
                VaultError::BadKey(format!("{MASTER_KEY_ENV} is not valid UTF-8"))
            })?)),
        };
        MasterKey::load_with(data_dir, env.as_ref().map(|s| s.as_str()))
    }

    /// [`MasterKey::load`] with the environment variable's value passed in (tests set
    /// no process-wide environment).
    fn load_with(data_dir: &Path, env: Option<&str>) -> Result<MasterKey, VaultError> {
        if let Some(v) = env
            && !v.trim().is_empty()
        {
            return MasterKey::parse(v).map_err(|e| match e {
                VaultError::BadKey(reason) => {
                    VaultError::BadKey(format!("{MASTER_KEY_ENV}: {reason}"))
                }
                other => other,
            });
        }
        load_key_file(data_dir).map(|(ring, _)| ring.current)
    }

    /// The key id (16 hex characters, derived from the key; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Create a directory (and parents) readable by the owner only; an existing directory
/// is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Write a new file (failing if it exists) readable by the owner only, and flush it.
fn write_new_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// A fresh name beside the key file, where a new version is written before it moves
/// into place.
fn key_file_aside(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".{MASTER_KEY_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Replace the key file with `contents`: written aside, synced, renamed into place and
/// the directory synced, so a crash leaves the old file or the new one, never a torn one.
fn replace_key_file(dir: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = key_file_aside(dir);
    write_new_private_file(&tmp, contents)?;
    if let Err(e) = std::fs::rename(&tmp, dir.join(MASTER_KEY_FILE)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Best effort: not every platform can sync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The key file's keys and stamp, creating the file (and its directory) on first use.
fn load_key_file(data_dir: &Path) -> Result<(KeyRing, FileStamp), VaultError> {
    let path = data_dir.join(MASTER_KEY_FILE);
    let io = |source| VaultError::KeyFile {
        path: path.clone(),
        source,
    };
    create_private_dir(data_dir).map_err(io)?;
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(data_dir, &path)?,
        Err(e) => return Err(io(e)),
    }
    read_key_ring(&path)
}

/// Create the key file with a new random key, unless another process creates it first
/// (then its key is the one; the caller reads the file either way).
fn create_key_file(dir: &Path, path: &Path) -> Result<(), VaultError> {
    let io = |source| VaultError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let key = MasterKey::generate();
    let text = Zeroizing::new(format!("{}\n", hex::encode(*key.bytes)));
    // Write the whole key aside, then link it into place: `link` fails if the name
    // exists, so exactly one process's key wins and nobody reads a half-written file.
    let tmp = key_file_aside(dir);
    write_new_private_file(&tmp, text.as_bytes()).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        // A filesystem without hard links: create the file in place instead (a reader
        // racing us may see it empty for a moment; `read_key_ring` waits for that).
        Err(_) => match write_new_private_file(path, text.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io(e)),
        },
    }
    // Make the new directory entry durable too (best effort: not every platform can).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(path = %path.display(), key_id = %key.id, "created a new master key");
    Ok(())
}

/// A sealed secret as stored: the flow8 shape plus the key id and, for envelopes bound
/// to their record, the cipher (`"alg": "xchacha20poly1305"`).
///
/// `key_id` may be absent in documents sealed before key ids existed (the flow8 shape
/// has none); such an envelope is tried with every key the vault holds. `alg` is absent
/// in envelopes sealed before the binding (secretbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `true`.
    pub encrypted: bool,
    /// 24-byte nonce, standard base64.
    pub nonce: String,
    /// The ciphertext and its Poly1305 tag (before it for secretbox, after it for
    /// XChaCha20-Poly1305), standard base64.
    pub ciphertext: String,
    /// Id of the master key that sealed it.
    #[serde(default)]
    pub key_id: String,
    /// The cipher; absent (secretbox) in envelopes sealed before the binding.
    #[serde(default, skip_serializing_if = "Cipher::is_secretbox")]
    pub alg: Cipher,
}

impl Envelope {
    /// The envelope a JSON value holds, if it is one (`"encrypted": true` and the
    /// envelope's fields), so config fields can be told apart.
    pub fn from_json(v: &serde_json::Value) -> Option<Envelope> {
        if v.get("encrypted") == Some(&serde_json::Value::Bool(true)) {
            serde_json::from_value(v.clone()).ok()
        } else {
            None
        }
    }

    /// The envelope as a JSON object (the stored shape).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "encrypted": self.encrypted,
            "nonce": self.nonce,
            "ciphertext": self.ciphertext,
            "key_id": self.key_id,
        });
        if !self.alg.is_secretbox() {
            v["alg"] = serde_json::json!(self.alg);
        }
        v
    }

    /// Whether it is bound to its record (sealed since the binding).
    pub fn is_bound(&self) -> bool {
        self.alg == Cipher::XChaCha20Poly1305
    }
}

const CHECK_PLAINTEXT: &str = "flow8-master-key-check";

/// Where the key check value lives: the `vault_check` host setting.
const CHECK_CONTEXT: SealContext<'static> = SealContext {
    company: "",
    kind: RecordKind::HostMeta,
    record: "vault_check",
    field: "value",
};

/// What tells one version of the key file from another: file timestamps alone are
/// too coarse (two writes within a few milliseconds share one), but a rotation renames a
/// new file into place, so the inode changes too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        };
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            inode,
            len: m.len(),
            modified: m.modified().ok(),
        }
    }
}

/// The stamp of whatever file is at `path` now (None when there is none).
fn file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
}

/// Read a key file: the first key is current, later lines (blank lines and `#`
/// comments skipped) are older keys; and the stamp of the version read.
///
/// The file is opened once, and its stamp, mode and text all come from that one open
/// file. A rotation renames a new file into place, which leaves an open handle on the
/// old one: so the stamp always belongs to the keys returned. (Stamping the path and
/// reading it separately could pair the old file's keys with the new file's stamp, and
/// a vault holding that pair would never look at the file again.)
fn read_key_ring(path: &Path) -> Result<(KeyRing, FileStamp), VaultError> {
    use std::io::Read;
    let io = |source| VaultError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    // Only a creator without hard links leaves an empty file visible, and only for the
    // moment between creating and writing it: wait for it a little.
    let mut attempts = 0;
    let (text, meta) = loop {
        let mut file = std::fs::File::open(path).map_err(io)?;
        #[cfg(test)]
        hooks::key_file_opened();
        let meta = file.metadata().map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::InsecureKeyFile {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        // Room for the whole file up front, so no partial copy of a key is left behind
        // in a reallocated buffer that is not zeroed.
        let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
        let mut text = Zeroizing::new(String::with_capacity(capacity));
        file.read_to_string(&mut text).map_err(io)?;
        attempts += 1;
        if !text.trim().is_empty() || attempts > 40 {
            break (text, meta);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ring = parse_key_ring(&text).map_err(|e| match e {
        VaultError::BadKey(r) => VaultError::BadKey(format!("{}: {r}", path.display())),
        other => other,
    })?;
    Ok((ring, FileStamp::of(&meta)))
}

/// The keys of a key file's text: the first key line is current, later ones are older
/// keys (blank lines and `#` comments skipped, a key listed twice kept once).
fn parse_key_ring(text: &str) -> Result<KeyRing, VaultError> {
    let mut lines = key_lines(text);
    let current = MasterKey::parse(lines.next().unwrap_or(""))?;
    let mut ring = KeyRing {
        current,
        old: Vec::new(),
    };
    for line in lines {
        let key = MasterKey::parse(line)?;
        if ring.find(&key.id).is_none() {
            ring.old.push(key);
        }
    }
    Ok(ring)
}

fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Put a new current key at the top of the key file, keeping every older key below it
/// (written aside, synced, then renamed into place: a crash leaves the old file or the
/// new one, never a torn one). Returns the new key's id.
pub fn rotate_key_file(data_dir: &Path) -> Result<String, VaultError> {
    let path = data_dir.join(MASTER_KEY_FILE);
    let io = |source| VaultError::KeyFile {
        path: path.clone(),
        source,
    };
    let (ring, _) = read_key_ring(&path)?;
    let new = MasterKey::generate();
    let mut text = Zeroizing::new(format!(
        "# flow8 master keys: the first seals, the others only open (newest first)\n{}\n",
        hex::encode(*new.bytes)
    ));
    for k in ring.keys() {
        text.push_str(&hex::encode(*k.bytes));
        text.push('\n');
    }
    replace_key_file(data_dir, text.as_bytes()).map_err(io)?;
    Ok(new.id.clone())
}

/// Drop older keys from the key file, keeping the current key and every key in `keep`;
/// the ids dropped. Written aside, synced and renamed into place, like a rotation.
pub fn prune_key_file(data_dir: &Path, keep: &[String]) -> Result<Vec<String>, VaultError> {
    let path = data_dir.join(MASTER_KEY_FILE);
    let io = |source| VaultError::KeyFile {
        path: path.clone(),
        source,
    };
    let (ring, _) = read_key_ring(&path)?;
    let mut text = Zeroizing::new(String::from(
        "# flow8 master keys: the first seals, the others only open (newest first)\n",
    ));
    text.push_str(&hex::encode(*ring.current.bytes));
    text.push('\n');
    let mut dropped = Vec::new();
    for k in &ring.old {
        if keep.contains(&k.id) {
            text.push_str(&hex::encode(*k.bytes));
            text.push('\n');
        } else {
            dropped.push(k.id.clone());
        }
    }
    if dropped.is_empty() {
        return Ok(dropped);
    }
    replace_key_file(data_dir, text.as_bytes()).map_err(io)?;
    Ok(dropped)
}

/// The keys a vault holds: the current one seals, older ones only open.
#[derive(Clone)]
struct KeyRing {
    current: MasterKey,
    old: Vec<MasterKey>,
}

impl KeyRing {
    fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.current).chain(self.old.iter())
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        self.keys().find(|k| k.id == id)
    }
}

/// A key file the vault re-reads when it changes (`flow8-host keys rotate` writes a
/// new current key into it while servers run).
struct WatchedKeyFile {
    path: PathBuf,
    /// When the file was last looked at, and the stamp of the version last read.
    seen: std::sync::Mutex<(std::time::Instant, Option<FileStamp>)>,
}

/// How often a vault with a key file looks whether the file changed.
const KEY_FILE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The environment variable with older keys (comma-separated), which open secrets but
/// never seal new ones: set it to the previous key while `keys rotate` re-seals.
pub const PREVIOUS_KEYS_ENV: &str = "FLOW8_PREVIOUS_MASTER_KEYS";

/// Seals and opens secrets with the host's master keys.
pub struct Vault {
    ring: std::sync::RwLock<std::sync::Arc<KeyRing>>,
    file: Option<WatchedKeyFile>,
}

/// A copy holds the same keys but does not follow the key file.
impl Clone for Vault {
    fn clone(&self) -> Vault {
        Vault {
            ring: std::sync::RwLock::new(self.ring()),
            file: None,
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring();
        f.debug_struct("Vault")
            .field("key_id", &ring.current.id)
            .field(
                "old_keys",
                &ring.old.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Vault {
    /// A vault sealing with `current`.
    pub fn new(current: MasterKey) -> Vault {
        Vault {
            ring: std::sync::RwLock::new(std::sync::Arc::new(KeyRing {
                current,
                old: Vec::new(),
            })),
            file: None,
        }
    }

    /// The host's keys:
    ///
    /// - `FLOW8_MASTER_KEY` seals and opens, and each key in
    ///   `FLOW8_PREVIOUS_MASTER_KEYS` (comma-separated) only opens; or, when the first is
    ///   unset,
    /// - `<data_dir>/master.key`, created on first use (see [`MasterKey::load`]): its
    ///   first line is the current key, later lines are older keys. The vault re-reads
    ///   the file when it changes, so a running host follows `keys rotate`.
    pub fn load(data_dir: &Path) -> Result<Vault, VaultError> {
        // Set but not UTF-8 counts as set: `MasterKey::load` names that error.
        let env_set = std::env::var_os(MASTER_KEY_ENV)
            .is_some_and(|v| !v.to_string_lossy().trim().is_empty());
        if env_set {
            let mut vault = Vault::new(MasterKey::load(data_dir)?);
            if let Ok(list) = std::env::var(PREVIOUS_KEYS_ENV) {
                for part in list.split(',').filter(|p| !p.trim().is_empty()) {
                    let key = MasterKey::parse(part).map_err(|e| match e {
                        VaultError::BadKey(r) => {
                            VaultError::BadKey(format!("{PREVIOUS_KEYS_ENV}: {r}"))
                        }
                        other => other,
                    })?;
                    vault = vault.with_old_key(key);
                }
            }
            return Ok(vault);
        }
        let (ring, stamp) = load_key_file(data_dir)?;
        Ok(Vault {
            ring: std::sync::RwLock::new(std::sync::Arc::new(ring)),
            file: Some(WatchedKeyFile {
                path: data_dir.join(MASTER_KEY_FILE),
                seen: std::sync::Mutex::new((std::time::Instant::now(), Some(stamp))),
            }),
        })
    }

    /// A vault holding the keys of a key file's text (the format of `master.key`: the
    /// first key seals, later ones only open), following no file. What `Vault::load`
    /// reads from the file, for tools and tests that have the text in hand.
    pub fn from_key_file_text(text: &str) -> Result<Vault, VaultError> {
        Ok(Vault {
            ring: std::sync::RwLock::new(std::sync::Arc::new(parse_key_ring(text)?)),
            file: None,
        })
    }

    /// The key file this vault follows, if its keys came from one.
    pub fn key_file(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Also open secrets sealed with an older key (new secrets are always sealed with
    /// the current one).
    pub fn with_old_key(self, key: MasterKey) -> Vault {
        let mut ring = (*self.ring()).clone();
        if key.id != ring.current.id && !ring.old.iter().any(|k| k.id == key.id) {
            ring.old.push(key);
        }
        self.set_ring(ring);
        self
    }

    fn ring(&self) -> std::sync::Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_ring(&self, ring: KeyRing) {
        *self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(ring);
    }

    /// Re-read the key file if it changed. Without `force` the file is looked at no more
    /// than every [`KEY_FILE_CHECK_INTERVAL`]; `force` (an envelope under an unknown key
    /// id) looks now. Either way the file is read only when it changed (inode, size or
    /// modification time), so a stream of unknown key ids costs a `stat` each, not a read. Keys are
    /// only ever added: a key this vault had stays, so a file edited by mistake cannot
    /// make secrets unreadable in a running host.
    fn reload(&self, force: bool) {
        let Some(file) = &self.file else { return };
        let mut seen = file
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force && seen.0.elapsed() < KEY_FILE_CHECK_INTERVAL {
            return;
        }
        seen.0 = std::time::Instant::now();
        let stamp = file_stamp(&file.path);
        if stamp.is_some() && stamp == seen.1 {
            return;
        }
        match read_key_ring(&file.path) {
            Ok((mut merged, stamp)) => {
                seen.1 = Some(stamp);
                let old = self.ring();
                for k in old.keys() {
                    if merged.find(&k.id).is_none() {
                        merged.old.push(k.clone());
                    }
                }
                if merged.current.id != old.current.id {
                    tracing::info!(key_id = %merged.current.id, "the master key file changed: sealing with the new key");
                }
                self.set_ring(merged);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the master key file; keeping the keys in hand")
            }
        }
    }

    /// The current key's id.
    pub fn key_id(&self) -> String {
        self.reload(false);
        self.ring().current.id.clone()
    }

    /// Ids of the keys that only open (older keys).
    pub fn old_key_ids(&self) -> Vec<String> {
        self.ring().old.iter().map(|k| k.id.clone()).collect()
    }

    fn secretbox(key: &MasterKey) -> XSalsa20Poly1305 {
        XSalsa20Poly1305::new(Key::from_slice(&key.bytes[..]))
    }

    fn aead(key: &MasterKey) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key.bytes[..]))
    }

    /// Seal a plaintext for `context` (bound: it opens only there) with the current key
    /// and a fresh random nonce.
    pub fn encrypt(&self, plaintext: &str, context: &SealContext<'_>) -> Envelope {
        self.reload(false);
        let ring = self.ring();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = context.associated_data();
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: &aad,
        };
        // The AEAD fails only for inputs beyond 2^38 bytes, which no `&str` in memory is.
        let ciphertext = Vault::aead(&ring.current)
            .encrypt(chacha20poly1305::XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        Envelope {
            encrypted: true,
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
            key_id: ring.current.id.clone(),
            alg: Cipher::XChaCha20Poly1305,
        }
    }

    /// Seal in the format from before the binding (secretbox, opens for any record).
    /// Only for tests of the migration: the host never writes it.
    #[cfg(any(test, feature = "legacy-seal"))]
    #[doc(hidden)]
    pub fn encrypt_unbound_legacy(&self, plaintext: &str) -> Envelope {
        let ring = self.ring();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ciphertext = Vault::secretbox(&ring.current)
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("XSalsa20-Poly1305 encryption of an in-memory buffer cannot fail");
        Envelope {
            encrypted: true,
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
            key_id: ring.current.id.clone(),
            alg: Cipher::Secretbox,
        }
    }

    /// The envelope re-sealed with the current key, bound to `context`, when it is not
    /// both already (a rotation's work); None when it is. Opening it checks it belongs
    /// to `context` if it is bound.
    pub fn reseal(
        &self,
        envelope: &Envelope,
        context: &SealContext<'_>,
    ) -> Result<Option<Envelope>, VaultError> {
        if envelope.is_bound() && envelope.key_id == self.key_id() {
            return Ok(None);
        }
        let plain = self.decrypt(envelope, context)?;
        Ok(Some(self.encrypt(plain.expose(), context)))
    }

    /// Open an envelope read from `context`. A bound envelope opens only there
    /// ([`VaultError::WrongRecord`] elsewhere); one from before the binding opens
    /// anywhere.
    pub fn decrypt(
        &self,
        envelope: &Envelope,
        context: &SealContext<'_>,
    ) -> Result<Secret, VaultError> {
        if !envelope.encrypted {
            return Err(VaultError::Malformed("`encrypted` is false".into()));
        }
        let nonce = B64
            .decode(&envelope.nonce)
            .map_err(|_| VaultError::Malformed("nonce is not standard base64".into()))?;
        if nonce.len() != NONCE_LEN {
            return Err(VaultError::Malformed(format!(
                "nonce is {} bytes; secretbox uses {NONCE_LEN}",
                nonce.len()
            )));
        }
        let ciphertext = B64
            .decode(&envelope.ciphertext)
            .map_err(|_| VaultError::Malformed("ciphertext is not standard base64".into()))?;
        if ciphertext.len() < TAG_LEN {
            return Err(VaultError::Malformed(format!(
                "ciphertext is {} bytes, shorter than its {TAG_LEN}-byte tag",
                ciphertext.len()
            )));
        }
        let aad = context.associated_data();
        let open = |key: &MasterKey| {
            match envelope.alg {
                Cipher::Secretbox => {
                    Vault::secretbox(key).decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
                }
                Cipher::XChaCha20Poly1305 => Vault::aead(key).decrypt(
                    chacha20poly1305::XNonce::from_slice(&nonce),
                    Payload {
                        msg: ciphertext.as_slice(),
                        aad: &aad,
                    },
                ),
            }
            .map(Zeroizing::new)
            .ok()
        };
        // With the key in hand, a bound envelope that does not open was sealed for
        // another place (or altered): say which record refused it.
        let refused = || {
            if envelope.is_bound() {
                VaultError::WrongRecord {
                    context: context.to_string(),
                }
            } else {
                VaultError::Tampered
            }
        };
        let mut ring = self.ring();
        if !envelope.key_id.is_empty() && ring.find(&envelope.key_id).is_none() {
            // Perhaps sealed by a host that already follows a rotated key file.
            self.reload(true);
            ring = self.ring();
        }
        let plain = if envelope.key_id.is_empty() {
            // Sealed before key ids: whichever key authenticates it is the one.
            ring.keys().find_map(open).ok_or_else(refused)?
        } else {
            let key = ring
                .find(&envelope.key_id)
                .ok_or_else(|| VaultError::UnknownKey {
                    key_id: envelope.key_id.clone(),
                })?;
            open(key).ok_or_else(refused)?
        };
        let text = std::str::from_utf8(&plain)
            .map_err(|_| VaultError::Malformed("plaintext is not UTF-8".into()))?;
        Ok(Secret::new(text.to_owned()))
    }

    /// A value the store keeps (e.g. in its meta table) so a host started with the
    /// wrong key fails at start, see [`Vault::verify_check_value`].
    pub fn check_value(&self) -> String {
        self.encrypt(CHECK_PLAINTEXT, &CHECK_CONTEXT)
            .to_json()
            .to_string()
    }

    /// Verify a stored check value against this vault's keys: `WrongMasterKey` when
    /// none of them wrote it.
    pub fn verify_check_value(&self, stored: &str) -> Result<(), VaultError> {
        let envelope: Envelope = serde_json::from_str(stored)
            .map_err(|e| VaultError::Malformed(format!("key check value: {e}")))?;
        match self.decrypt(&envelope, &CHECK_CONTEXT) {
            Ok(s) if s.expose() == CHECK_PLAINTEXT => Ok(()),
            Ok(_)
            | Err(VaultError::Tampered)
            | Err(VaultError::WrongRecord { .. })
            | Err(VaultError::UnknownKey { .. }) => Err(VaultError::WrongMasterKey {
                expected_key_id: if envelope.key_id.is_empty() {
                    "(unknown)".into()
                } else {
                    envelope.key_id
                },
                got_key_id: self.ring().current.id.clone(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// Test hooks: let a unit test act at one exact point of the key-file loader (e.g. a
/// rotation while the file is being read), so a race is reproduced, not hoped for.
#[cfg(test)]
mod hooks {
    use std::cell::RefCell;

    thread_local! {
        static KEY_FILE_OPENED: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// Run `f` once, the next time this thread's loader has opened the key file.
    pub(super) fn on_key_file_opened(f: impl FnOnce() + 'static) {
        KEY_FILE_OPENED.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn key_file_opened() {
        if let Some(f) = KEY_FILE_OPENED.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: &str = "canary-plaintext-123";

    /// Where the tests' secrets live, unless a test says otherwise.
    const CTX: SealContext<'static> = SealContext {
        company: "company-a",
        kind: RecordKind::Component,
        record: "65f0c2a1b2c3d4e5f6a7b8c9",
        field: "api_key",
    };

    fn vault() -> Vault {
        Vault::new(MasterKey::generate())
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let v = vault();
        let a = v.encrypt(PLAIN, &CTX);
        let b = v.encrypt(PLAIN, &CTX);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(v.decrypt(&a, &CTX).unwrap().expose(), PLAIN);
        assert_eq!(v.decrypt(&b, &CTX).unwrap().expose(), PLAIN);
        assert_eq!(v.decrypt(&v.encrypt("", &CTX), &CTX).unwrap().expose(), "");
        let unicode = "pässwörd 🔑";
        assert_eq!(
            v.decrypt(&v.encrypt(unicode, &CTX), &CTX).unwrap().expose(),
            unicode
        );
        assert!(!serde_json::to_string(&a).unwrap().contains("canary"));
    }

    #[test]
    fn stored_shape_is_flow8_plus_key_id() {
        let v = vault();
        let e = v.encrypt(PLAIN, &CTX);
        let json = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys.len(), 5);
        for k in ["encrypted", "nonce", "ciphertext", "key_id", "alg"] {
            assert!(keys.contains(&k), "{k} missing from {json}");
        }
        assert_eq!(json["encrypted"], true);
        assert_eq!(json["key_id"], v.key_id());
        assert_eq!(json["alg"], "xchacha20poly1305");
        assert_eq!(B64.decode(e.nonce.as_bytes()).unwrap().len(), 24);
        assert_eq!(e.to_json(), json);
        assert_eq!(Envelope::from_json(&json), Some(e.clone()));
        assert_eq!(serde_json::from_value::<Envelope>(json.clone()).unwrap(), e);

        // Unknown fields are refused; a plain string is not an envelope.
        let mut extra = json.clone();
        extra["plaintext"] = json!("x");
        assert!(serde_json::from_value::<Envelope>(extra.clone()).is_err());
        assert_eq!(Envelope::from_json(&extra), None);
        assert_eq!(Envelope::from_json(&json!("sk-abc")), None);
        assert_eq!(Envelope::from_json(&json!({"encrypted": false})), None);

        // The seed's shape without a key id or alg (legacy secretbox data) still opens.
        let old = v.encrypt_unbound_legacy(PLAIN);
        assert!(!old.is_bound());
        assert_eq!(old.to_json().get("alg"), None, "{:?}", old.to_json());
        let legacy = json!({"encrypted": true, "nonce": old.nonce, "ciphertext": old.ciphertext});
        let legacy = Envelope::from_json(&legacy).unwrap();
        assert_eq!(legacy.key_id, "");
        assert_eq!(v.decrypt(&legacy, &CTX).unwrap().expose(), PLAIN);
        assert!(matches!(
            vault().decrypt(&legacy, &CTX),
            Err(VaultError::Tampered)
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let v = vault();
        // A bound envelope that does not open with its key is refused for this record
        // (moved or altered: the AEAD cannot tell which); an old one is `Tampered`.
        let refused = |e: &Envelope| match v.decrypt(e, &CTX) {
            Err(VaultError::WrongRecord { .. }) => e.is_bound(),
            Err(VaultError::Tampered) => !e.is_bound(),
            _ => false,
        };
        for good in [v.encrypt(PLAIN, &CTX), v.encrypt_unbound_legacy(PLAIN)] {
            for i in [0, 16, 20] {
                let mut e = good.clone();
                let mut raw = B64.decode(&e.ciphertext).unwrap();
                raw[i] ^= 1;
                e.ciphertext = B64.encode(raw);
                assert!(refused(&e), "byte {i} of {good:?}");
            }
            let mut e = good.clone();
            let mut nonce = B64.decode(&e.nonce).unwrap();
            nonce[3] ^= 0x80;
            e.nonce = B64.encode(nonce);
            assert!(refused(&e), "{good:?}");
            // Truncated ciphertext.
            let mut e = good.clone();
            let raw = B64.decode(&e.ciphertext).unwrap();
            e.ciphertext = B64.encode(&raw[..raw.len() - 1]);
            assert!(refused(&e), "{good:?}");
            // The cipher switched (an old envelope marked bound, or the reverse).
            let mut e = good.clone();
            e.alg = if good.is_bound() {
                Cipher::Secretbox
            } else {
                Cipher::XChaCha20Poly1305
            };
            assert!(refused(&e), "{good:?}");
        }
    }

    #[test]
    fn a_bound_envelope_opens_only_for_its_company_record_and_field() {
        let v = vault();
        let sealed = v.encrypt(PLAIN, &CTX);
        assert!(sealed.is_bound());
        assert_eq!(v.decrypt(&sealed, &CTX).unwrap().expose(), PLAIN);
        let elsewhere = [
            SealContext {
                company: "company-b",
                ..CTX
            },
            SealContext {
                kind: RecordKind::Link,
                ..CTX
            },
            SealContext {
                record: "65f0c2a1b2c3d4e5f6a7b8ca",
                ..CTX
            },
            SealContext {
                field: "secret_access_key",
                ..CTX
            },
        ];
        for ctx in elsewhere {
            match v.decrypt(&sealed, &ctx) {
                Err(e @ VaultError::WrongRecord { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("does not belong to this record")
                            && msg.contains(&ctx.to_string())
                            && !msg.contains(PLAIN),
                        "{msg}"
                    );
                }
                other => panic!("{ctx}: expected WrongRecord, got {other:?}"),
            }
        }
        // The parts are length-prefixed: moving characters between them is another place.
        let ab = SealContext {
            company: "ab",
            record: "c",
            ..CTX
        };
        let a = SealContext {
            company: "a",
            record: "bc",
            ..CTX
        };
        assert_ne!(ab.associated_data(), a.associated_data());
        assert!(matches!(
            v.decrypt(&v.encrypt(PLAIN, &ab), &a),
            Err(VaultError::WrongRecord { .. })
        ));
    }

    #[test]
    fn old_envelopes_open_anywhere_and_reseal_binds_them() {
        let old_key = vault();
        let legacy = old_key.encrypt_unbound_legacy(PLAIN);
        let other_place = SealContext {
            company: "company-b",
            ..CTX
        };
        // Sealed before the binding: readable wherever it is found.
        assert_eq!(old_key.decrypt(&legacy, &CTX).unwrap().expose(), PLAIN);
        assert_eq!(
            old_key.decrypt(&legacy, &other_place).unwrap().expose(),
            PLAIN
        );

        // The same key: re-sealed into the bound form all the same.
        let bound = old_key.reseal(&legacy, &CTX).unwrap().unwrap();
        assert!(bound.is_bound());
        assert_eq!(bound.key_id, old_key.key_id());
        assert_eq!(old_key.decrypt(&bound, &CTX).unwrap().expose(), PLAIN);
        assert!(matches!(
            old_key.decrypt(&bound, &other_place),
            Err(VaultError::WrongRecord { .. })
        ));
        assert_eq!(old_key.reseal(&bound, &CTX).unwrap(), None, "nothing to do");

        // A rotation: a new current key re-seals old and bound envelopes under it.
        let rotated = Vault::new(MasterKey::generate())
            .with_old_key(MasterKey::parse(&hex::encode(*old_key.ring().current.bytes)).unwrap());
        for e in [&legacy, &bound] {
            let new = rotated.reseal(e, &CTX).unwrap().unwrap();
            assert!(new.is_bound());
            assert_eq!(new.key_id, rotated.key_id());
            assert_eq!(rotated.decrypt(&new, &CTX).unwrap().expose(), PLAIN);
        }
        // A moved bound envelope is not laundered by a rotation.
        assert!(matches!(
            rotated.reseal(&bound, &other_place),
            Err(VaultError::WrongRecord { .. })
        ));
        // A key check value from before the binding still verifies.
        let check = old_key
            .encrypt_unbound_legacy(CHECK_PLAINTEXT)
            .to_json()
            .to_string();
        old_key.verify_check_value(&check).unwrap();
    }

    #[test]
    fn malformed_envelopes_are_named() {
        let v = vault();
        let good = v.encrypt(PLAIN, &CTX);
        let cases = [
            Envelope {
                encrypted: false,
                ..good.clone()
            },
            Envelope {
                nonce: "not base64!".into(),
                ..good.clone()
            },
            Envelope {
                nonce: B64.encode([0u8; 12]),
                ..good.clone()
            },
            Envelope {
                ciphertext: "%%%".into(),
                ..good.clone()
            },
            Envelope {
                ciphertext: B64.encode([0u8; 8]),
                ..good.clone()
            },
        ];
        for e in cases {
            assert!(
                matches!(v.decrypt(&e, &CTX), Err(VaultError::Malformed(_))),
                "{e:?}"
            );
        }
    }

    #[test]
    fn wrong_keys_are_named() {
        let v = vault();
        let other = vault();
        let sealed = v.encrypt(PLAIN, &CTX);
        let err = other.decrypt(&sealed, &CTX).unwrap_err();
        assert!(matches!(&err, VaultError::UnknownKey { key_id } if *key_id == v.key_id()));
        let msg = err.to_string();
        assert!(
            msg.contains(&v.key_id()) && msg.contains("FLOW8_MASTER_KEY"),
            "{msg}"
        );

        // An envelope claiming the other key's id does not open either.
        let forged = Envelope {
            key_id: other.key_id(),
            ..sealed.clone()
        };
        assert!(matches!(
            other.decrypt(&forged, &CTX),
            Err(VaultError::WrongRecord { .. })
        ));

        // The check value catches the wrong key at start.
        let check = v.check_value();
        v.verify_check_value(&check).unwrap();
        match other.verify_check_value(&check) {
            Err(VaultError::WrongMasterKey {
                expected_key_id,
                got_key_id,
            }) => {
                assert_eq!(expected_key_id, v.key_id());
                assert_eq!(got_key_id, other.key_id());
            }
            r => panic!("expected WrongMasterKey, got {r:?}"),
        }
        assert!(matches!(
            v.verify_check_value("not json"),
            Err(VaultError::Malformed(_))
        ));
        assert!(!check.contains(CHECK_PLAINTEXT));
    }

    #[test]
    fn a_vault_following_the_key_file_opens_a_rotated_key_at_once() {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return; // this test is about the key file
        }
        let dir = tempfile::tempdir().unwrap();
        let running = Vault::load(dir.path()).unwrap();
        let old_id = running.key_id();
        let sealed_old = running.encrypt("old", &CTX);
        // Right after the running vault loaded, another process rotates and seals.
        let new_id = rotate_key_file(dir.path()).unwrap();
        let rotator = Vault::load(dir.path()).unwrap();
        assert_eq!(rotator.key_id(), new_id);
        let sealed_new = rotator.encrypt("new", &CTX);
        assert_eq!(running.decrypt(&sealed_new, &CTX).unwrap().expose(), "new");
        assert_eq!(running.decrypt(&sealed_old, &CTX).unwrap().expose(), "old");
        assert_eq!(running.key_id(), new_id);
        assert!(running.old_key_ids().contains(&old_id));
        // A key nobody has stays unknown (and costs a stat, not a read, each time).
        let stranger = Vault::new(MasterKey::generate()).encrypt("x", &CTX);
        for _ in 0..3 {
            assert!(matches!(
                running.decrypt(&stranger, &CTX),
                Err(VaultError::UnknownKey { .. })
            ));
        }
        // Pruning leaves the current key only; the running vault keeps what it had.
        assert_eq!(prune_key_file(dir.path(), &[]).unwrap(), vec![old_id]);
        assert_eq!(running.decrypt(&sealed_old, &CTX).unwrap().expose(), "old");
    }

    #[test]
    fn a_rotation_while_the_key_file_is_read_is_followed_at_the_next_look() {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return; // this test is about the key file
        }
        let dir = tempfile::tempdir().unwrap();
        let running = Vault::load(dir.path()).unwrap();
        rotate_key_file(dir.path()).unwrap();
        // The running vault notices the rotation and reads the file; right then, in
        // the middle of that read, another rotation replaces the file.
        let path = dir.path().to_path_buf();
        let newest = std::rc::Rc::new(std::cell::RefCell::new(String::new()));
        let slot = newest.clone();
        hooks::on_key_file_opened(move || {
            *slot.borrow_mut() = rotate_key_file(&path).unwrap();
        });
        running.reload(true);
        let newest = newest.borrow().clone();
        assert!(!newest.is_empty(), "the hook ran");
        // Whatever that read saw, the vault's next look at the file finds the newest
        // key: it never believes it holds a version of the file it did not read.
        running.reload(true);
        assert_eq!(running.ring().current.id, newest);
        let sealed = Vault::load(dir.path()).unwrap().encrypt("new", &CTX);
        assert_eq!(running.decrypt(&sealed, &CTX).unwrap().expose(), "new");
    }

    #[test]
    fn old_keys_open_old_envelopes() {
        let key = MasterKey::generate();
        let old = Vault::new(key.clone());
        let sealed = old.encrypt("old", &CTX);
        let check = old.check_value();
        let rotated = Vault::new(MasterKey::generate()).with_old_key(key.clone());
        assert_eq!(rotated.decrypt(&sealed, &CTX).unwrap().expose(), "old");
        rotated.verify_check_value(&check).unwrap();
        // New secrets use the new key.
        assert_eq!(rotated.encrypt("new", &CTX).key_id, rotated.key_id());
        assert_ne!(rotated.key_id(), key.id());
        // Adding the current or a known key again changes nothing.
        let current = rotated.ring().current.clone();
        let again = rotated
            .clone()
            .with_old_key(key)
            .with_old_key(current)
            .with_old_key(MasterKey::parse(&"00".repeat(32)).unwrap());
        assert_eq!(
            (rotated.old_key_ids().len(), again.old_key_ids().len()),
            (1, 2)
        );
    }

    #[test]
    fn nothing_secret_prints() {
        let hex_key = "ab".repeat(32);
        let k = MasterKey::parse(&hex_key).unwrap();
        let shown = format!("{k:?} {:?}", Vault::new(k.clone()));
        assert!(
            !shown.contains("abab") && !shown.contains("q6ur"),
            "{shown}"
        );
        assert!(shown.contains(k.id()));
        let s = Secret::new("hunter2-secret".into());
        assert_eq!(format!("{s:?} {s} {s:#?}"), "Secret(***) *** Secret(***)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(***))");

        // No error, in either form, carries plaintext or key material.
        let v = Vault::new(k);
        let sealed = v.encrypt("hunter2-secret", &CTX);
        let mut tampered = sealed.clone();
        tampered.ciphertext = B64.encode([1u8; 40]);
        let errors = [
            vault().decrypt(&sealed, &CTX).unwrap_err(),
            v.decrypt(&tampered, &CTX).unwrap_err(),
            vault().verify_check_value(&v.check_value()).unwrap_err(),
            MasterKey::parse(&hex_key[..63]).unwrap_err(),
            MasterKey::parse(&B64.encode([0xab; 31])).unwrap_err(),
        ];
        for e in errors {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("hunter2") && !text.contains("abab"),
                "{text}"
            );
        }
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex_key = "0123456789abcdef".repeat(4);
        let a = MasterKey::parse(&hex_key).unwrap();
        assert_eq!(
            MasterKey::parse(&hex_key.to_uppercase()).unwrap().id(),
            a.id()
        );
        assert_eq!(
            MasterKey::parse(&format!("  {hex_key}\n")).unwrap().id(),
            a.id()
        );
        let b64 = B64.encode(hex::decode(&hex_key).unwrap());
        assert_eq!(MasterKey::parse(&b64).unwrap().id(), a.id());
        assert_eq!(a.id().len(), 16);
        assert!(a.id().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.id(), MasterKey::generate().id());
        // The id is the documented derivation.
        let mut h = Sha256::new();
        h.update(b"flow8-master-key-id:");
        h.update(hex::decode(&hex_key).unwrap());
        assert_eq!(a.id(), hex::encode(&h.finalize()[..8]));

        for bad in [
            "",
            "short",
            &"zz".repeat(32),
            &B64.encode([1u8; 16]),
            &"ab".repeat(33),
        ] {
            assert!(
                matches!(MasterKey::parse(bad), Err(VaultError::BadKey(_))),
                "{bad}"
            );
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("nested");
        let a = MasterKey::load_with(&dir, None).unwrap();
        let b = MasterKey::load_with(&dir, Some("")).unwrap();
        assert_eq!(a.id(), b.id());
        let path = dir.join(MASTER_KEY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(MasterKey::parse(&text).unwrap().id(), a.id());
        assert_eq!(text.trim().len(), 64);
        // Nothing left behind but the key.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MASTER_KEY_FILE)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir), 0o700);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = MasterKey::load_with(&dir, None).unwrap_err();
            assert!(
                matches!(err, VaultError::InsecureKeyFile { mode: 0o644, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_new_private_file(&dir.path().join(MASTER_KEY_FILE), b"not a key").unwrap();
        let err = MasterKey::load_with(dir.path(), None).unwrap_err();
        assert!(matches!(err, VaultError::BadKey(_)));
        assert!(err.to_string().contains(MASTER_KEY_FILE), "{err}");
    }

    #[test]
    fn key_file_text_reads_as_the_file_does() {
        let new = "11".repeat(32);
        let old = "22".repeat(32);
        let text = format!("# keys\n\n{new}\n  {old}\r\n{new}\n");
        let vault = Vault::from_key_file_text(&text).unwrap();
        assert_eq!(vault.key_id(), MasterKey::parse(&new).unwrap().id());
        // The repeated current key is not an old key too.
        assert_eq!(
            vault.old_key_ids(),
            [MasterKey::parse(&old).unwrap().id().to_string()]
        );
        assert!(vault.key_file().is_none());
        let dir = tempfile::tempdir().unwrap();
        write_new_private_file(&dir.path().join(MASTER_KEY_FILE), text.as_bytes()).unwrap();
        let (ring, _) = load_key_file(dir.path()).unwrap();
        assert_eq!(ring.current.id(), vault.key_id());
        let old_ids: Vec<String> = ring.old.iter().map(|k| k.id.clone()).collect();
        assert_eq!(old_ids, vault.old_key_ids());
        for bad in [
            "",
            "# only a comment\n",
            "not a key",
            &format!("{new}\nzz\n"),
        ] {
            assert!(
                matches!(Vault::from_key_file_text(bad), Err(VaultError::BadKey(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn environment_variable_wins() {
        let dir = tempfile::tempdir().unwrap();
        let from_file = MasterKey::load_with(dir.path(), None).unwrap();
        let hex_key = "42".repeat(32);
        let k = MasterKey::load_with(dir.path(), Some(&hex_key)).unwrap();
        assert_eq!(k.id(), MasterKey::parse(&hex_key).unwrap().id());
        assert_ne!(k.id(), from_file.id());
        // With the variable set, no key file is needed or created.
        let empty = tempfile::tempdir().unwrap();
        let dir2 = empty.path().join("fresh");
        MasterKey::load_with(&dir2, Some(&hex_key)).unwrap();
        assert!(!dir2.join(MASTER_KEY_FILE).exists());
        let err = MasterKey::load_with(&dir2, Some("oops")).unwrap_err();
        assert!(
            matches!(&err, VaultError::BadKey(m) if m.contains(MASTER_KEY_ENV)),
            "{err}"
        );
        assert!(!err.to_string().contains("oops"));
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        MasterKey::load_with(dir.path(), None)
                            .unwrap()
                            .id()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn secrets_compare_by_value() {
        assert_eq!(Secret::new("abc".into()), Secret::new("abc".into()));
        assert_ne!(Secret::new("abc".into()), Secret::new("abd".into()));
        assert_ne!(Secret::new("abc".into()), Secret::new("abcd".into()));
    }
}
