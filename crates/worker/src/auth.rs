//! Who may administer the worker: its admin token, and the access policy of the API's routes.
//!
//! At first start the worker writes a random token to `<root>/token` (mode 0600, root's; 0640
//! with the operator's `admin_group`) and keeps it across restarts. Callers of admin routes send
//! it as `Authorization: Bearer <token>`; the CLI reads it from the file, so whoever can read the
//! file (root, or the admin group) administers the worker and nobody else does. Which route needs
//! what is [`Access`], given per route by the API's route table (`api::Route::access`).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token's file name under the worker's root.
pub use kindling_api::TOKEN_FILE;
/// Random bytes in a token (hex-encoded in the file and on the wire).
const TOKEN_BYTES: usize = 32;

/// Errors loading or creating the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or write the admin token at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the admin token at {path} is not a regular file owned by the worker's user with mode \
         0600 or 0640; someone else may know it: remove it and restart the worker"
    )]
    Untrusted { path: PathBuf },
    #[error("admin_group `{0}` is neither a group in /etc/group nor a number")]
    UnknownGroup(String),
}

/// The worker's admin token.
pub struct Token {
    hex: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Loads `<root>/token`, or creates it with a new random token. `group` (the admin group's
    /// gid) may read it too. A token file that others could have written is refused; one that
    /// others could have read is replaced by a new token.
    pub fn load_or_create(root: &Path, group: Option<u32>) -> Result<Token, TokenError> {
        let path = root.join(TOKEN_FILE);
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        let mode = if group.is_some() { 0o640 } else { 0o600 };
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let meta = file.metadata().map_err(io)?;
                // What the name is now (a symbolic link is followed by open, not here): it must
                // be the very file opened, a regular file of the worker's user that nobody else
                // can write.
                let link = std::fs::symlink_metadata(&path).map_err(io)?;
                let own_uid = std::fs::metadata("/proc/self").map_err(io)?.uid();
                if !link.is_file()
                    || (link.dev(), link.ino()) != (meta.dev(), meta.ino())
                    || meta.uid() != own_uid
                    || meta.mode() & 0o022 != 0
                {
                    return Err(TokenError::Untrusted { path });
                }
                let readable_by_others = meta.mode() & 0o004 != 0
                    || (meta.mode() & 0o040 != 0 && Some(meta.gid()) != group);
                let mut text = String::new();
                let read = Read::by_ref(&mut file).take(1024).read_to_string(&mut text);
                match (read, Token::parse(&text)) {
                    (Ok(_), Some(token)) if !readable_by_others => {
                        // The operator may have set admin_group since the file was made.
                        restrict(&file, mode, group).map_err(io)?;
                        return Ok(token);
                    }
                    (Ok(_), Some(_)) => tracing::warn!(
                        path = %path.display(),
                        "the admin token was readable by users outside the admin group; \
                         replaced it with a new one"
                    ),
                    _ => tracing::warn!(
                        path = %path.display(),
                        "the admin token file is malformed; replaced it with a new one"
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symbolic link: nobody but an attacker puts one there.
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(TokenError::Untrusted { path });
                }
            }
            Err(e) => return Err(io(e)),
        }
        let token = Token::random().map_err(io)?;
        // Written whole to a private temporary, then renamed: a reader never sees half a token
        // and the file is never more readable than it should be.
        let tmp = root.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let tmp_io = |source| TokenError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(tmp_io)?;
        restrict(&file, mode, group).map_err(tmp_io)?;
        file.write_all(format!("{}\n", token.hex).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(tmp_io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        tracing::info!(path = %path.display(), "created the admin token");
        Ok(token)
    }

    /// A token from the OS's random number generator.
    fn random() -> std::io::Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Token {
            hex: hex::encode(bytes),
        })
    }

    /// A token as the file holds it: hex digits, at least [`TOKEN_BYTES`] of entropy.
    fn parse(text: &str) -> Option<Token> {
        let hex = text.trim();
        (hex.len() >= 2 * TOKEN_BYTES && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Token { hex: hex.into() })
    }

    /// Whether `presented` is this token, in time that depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.hex.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        let diff = expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Sets the token file's group and mode.
fn restrict(file: &std::fs::File, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    if let Some(gid) = group {
        std::os::unix::fs::fchown(file, None, Some(gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// The gid of `group`, a name in `etc_group` (the text of /etc/group) or a number.
pub fn group_id(group: &str, etc_group: &str) -> Result<u32, TokenError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    etc_group
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| TokenError::UnknownGroup(group.chars().take(64).collect()))
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the handler may show the admin more).
    Public,
    /// Invoking a function: anyone, unless the operator sets `run_requires_token`.
    Invoke,
    /// The admin token.
    Admin,
}

/// Who is calling, as far as the worker can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// No credential.
    Anonymous,
    /// A credential that is not the token.
    Invalid,
}

impl Caller {
    /// Identifies the caller from an `Authorization` header's value.
    pub fn identify(token: &Token, authorization: Option<&[u8]>) -> Caller {
        let Some(value) = authorization else {
            return Caller::Anonymous;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let bearer = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii());
        match bearer {
            Some(presented) if token.matches(presented) => Caller::Admin,
            _ => Caller::Invalid,
        }
    }
}

/// The operator's choices about authentication.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Whether invoking a function needs the token.
    pub run_requires_token: bool,
}

impl Policy {
    /// Whether `caller` may use a route that asks for `access`.
    pub fn allows(&self, access: Access, caller: Caller) -> bool {
        match access {
            Access::Public => true,
            Access::Invoke if !self.run_requires_token => true,
            Access::Invoke | Access::Admin => caller == Caller::Admin,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn token_is_created_private_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(TOKEN_FILE);
        let token = Token::load_or_create(root.path(), None).unwrap();
        assert_eq!(mode(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(token.matches(text.trim().as_bytes()));
        // Kept across restarts.
        let again = Token::load_or_create(root.path(), None).unwrap();
        assert!(again.matches(text.trim().as_bytes()));
        // No temporary left behind.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        // Two workers never share a token.
        let other = tempfile::tempdir().unwrap();
        let other = Token::load_or_create(other.path(), None).unwrap();
        assert!(!other.matches(text.trim().as_bytes()));
    }

    #[test]
    fn admin_group_may_read_the_token() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(TOKEN_FILE);
        let gid = std::fs::metadata(root.path()).unwrap().gid();
        Token::load_or_create(root.path(), Some(gid)).unwrap();
        assert_eq!(mode(&path), 0o640);
        let text = std::fs::read_to_string(&path).unwrap();
        let token = Token::load_or_create(root.path(), Some(gid)).unwrap();
        assert!(token.matches(text.trim().as_bytes()));
        // Without the admin group, members of the old group may know the token: a new one.
        let token = Token::load_or_create(root.path(), None).unwrap();
        assert!(!token.matches(text.trim().as_bytes()));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn leaked_malformed_or_planted_tokens_are_not_used() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(TOKEN_FILE);
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let token = Token::load_or_create(root.path(), None).unwrap();
        assert!(
            !token.matches("ab".repeat(32).as_bytes()),
            "world-readable token kept"
        );
        assert_eq!(mode(&path), 0o600);

        std::fs::write(&path, "short\n").unwrap();
        let token = Token::load_or_create(root.path(), None).unwrap();
        assert!(!token.matches(b"short"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(matches!(
            Token::load_or_create(root.path(), None),
            Err(TokenError::Untrusted { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(matches!(
            Token::load_or_create(root.path(), None),
            Err(TokenError::Untrusted { .. })
        ));
    }

    #[test]
    fn bearer_credentials() {
        let token = Token::parse(&"0f".repeat(32)).unwrap();
        let hex = "0f".repeat(32);
        let id = |h: &str| Caller::identify(&token, Some(h.as_bytes()));
        assert_eq!(Caller::identify(&token, None), Caller::Anonymous);
        assert_eq!(id(&format!("Bearer {hex}")), Caller::Admin);
        assert_eq!(id(&format!("bearer  {hex} ")), Caller::Admin);
        assert_eq!(id(&format!("Basic {hex}")), Caller::Invalid);
        assert_eq!(id(&format!("Bearer {}", "0e".repeat(32))), Caller::Invalid);
        assert_eq!(id(&format!("Bearer {hex}0")), Caller::Invalid);
        assert_eq!(id("Bearer "), Caller::Invalid);
        assert_eq!(id("Bear"), Caller::Invalid);
        assert_eq!(id(""), Caller::Invalid);
        assert!(format!("{token:?}").find(&hex).is_none());
    }

    #[test]
    fn policy() {
        let open = Policy::default();
        let closed = Policy {
            run_requires_token: true,
        };
        for caller in [Caller::Admin, Caller::Anonymous, Caller::Invalid] {
            assert!(open.allows(Access::Public, caller));
            assert!(closed.allows(Access::Public, caller));
            assert!(open.allows(Access::Invoke, caller));
            let admin = caller == Caller::Admin;
            assert_eq!(closed.allows(Access::Invoke, caller), admin);
            assert_eq!(open.allows(Access::Admin, caller), admin);
            assert_eq!(closed.allows(Access::Admin, caller), admin);
        }
    }

    #[test]
    fn groups_by_name_or_number() {
        let etc = "root:x:0:\nkindling:x:997:alice,bob\nbroken\n";
        assert_eq!(group_id("kindling", etc).unwrap(), 997);
        assert_eq!(group_id("1234", etc).unwrap(), 1234);
        assert!(matches!(
            group_id("nosuch", etc),
            Err(TokenError::UnknownGroup(_))
        ));
    }
}
