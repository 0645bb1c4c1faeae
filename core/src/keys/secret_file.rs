//! SSB's secret file (`~/.ssb/secret`): JSON between `#` comment lines.
//!
//! ```text
//! # this is your SECRET name.
//! {
//!   "curve": "ed25519",
//!   "public": "<base64>.ed25519",
//!   "private": "<base64 of seed || public>.ed25519",
//!   "id": "@<base64>.ed25519"
//! }
//! # your public name: @<base64>.ed25519
//! ```
//!
//! [`parse`] and [`format`] are pure. [`read`] and [`create`] (feature `fs`)
//! are the only filesystem access in this crate; no state machine uses them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{KeyError, Keypair, PublicKey};

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Not JSON after the comment lines are removed, or a required field is missing.
    #[error("not an SSB secret file: {0}")]
    Json(#[from] serde_json::Error),
    /// `curve` names something other than ed25519.
    #[error("unsupported curve {0:?}: only \"ed25519\" keys exist in SSB")]
    UnsupportedCurve(String),
    /// A key field does not decode.
    #[error("the \"{field}\" field is malformed: {source}")]
    Field {
        /// Which JSON field.
        field: &'static str,
        /// What is wrong with it.
        source: KeyError,
    },
    /// The private key's second half is not the public key of its first half.
    #[error("the private key is corrupt: its public half does not match its seed")]
    CorruptPrivateKey,
    /// `public` or `id` names a different key than `private`.
    #[error("the \"{field}\" field does not match the private key")]
    Mismatch {
        /// Which JSON field.
        field: &'static str,
    },
    /// Refused to replace an existing file.
    #[cfg(feature = "fs")]
    #[error("{0} already exists; refusing to overwrite an identity")]
    Exists(std::path::PathBuf),
    /// The file could not be read or written.
    #[cfg(feature = "fs")]
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Json {
    curve: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public: Option<String>,
    private: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

/// Parses a secret file's text. Lines whose first non-blank character is `#`
/// are comments.
pub fn parse(text: &str) -> Result<Keypair, SecretFileError> {
    let json: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let file: Json = serde_json::from_str(&json)?;
    if file.curve != "ed25519" {
        return Err(SecretFileError::UnsupportedCurve(file.curve));
    }

    let field = |field, source| SecretFileError::Field { field, source };
    let private_b64 = file
        .private
        .strip_suffix(".ed25519")
        .ok_or(field("private", KeyError::UnsupportedSuffix))?;
    let private = BASE64
        .decode(private_b64)
        .map_err(|e| field("private", e.into()))?;
    let private: [u8; 64] = private.as_slice().try_into().map_err(|_| {
        field(
            "private",
            KeyError::Length {
                expected: 64,
                found: private.len(),
            },
        )
    })?;

    let mut seed = [0u8; 32];
    seed.copy_from_slice(&private[..32]);
    let keypair = Keypair::from_seed(seed);
    zeroize::Zeroize::zeroize(&mut seed);
    let public = keypair.public();
    if public.as_bytes()[..] != private[32..] {
        return Err(SecretFileError::CorruptPrivateKey);
    }
    if let Some(text) = &file.public {
        let claimed = PublicKey::from_ssb_public(text).map_err(|e| field("public", e))?;
        if claimed != public {
            return Err(SecretFileError::Mismatch { field: "public" });
        }
    }
    if let Some(text) = &file.id {
        let claimed = PublicKey::from_ssb_id(text).map_err(|e| field("id", e))?;
        if claimed != public {
            return Err(SecretFileError::Mismatch { field: "id" });
        }
    }
    Ok(keypair)
}

/// The text of a secret file for `keypair`, in the layout `ssb-keys` writes.
pub fn format(keypair: &Keypair) -> String {
    let public = keypair.public();
    let json = Json {
        curve: "ed25519".into(),
        public: Some(public.to_ssb_public()),
        private: format!("{}.ed25519", BASE64.encode(keypair.to_libsodium_secret())),
        id: Some(public.to_string()),
    };
    let json = serde_json::to_string_pretty(&json).expect("a struct of strings serializes");
    format!(
        "# this is your SECRET name.\n\
         # this name gives you magical powers.\n\
         # with it you can mark your messages so that your friends can verify\n\
         # that they really did come from you.\n\
         #\n\
         # if any one learns this name, they can use it to destroy your identity\n\
         # NEVER show this to anyone!!!\n\
         \n\
         {json}\n\
         \n\
         # WARNING! It's vital that you DO NOT edit OR share your secret name\n\
         # instead, share your public name\n\
         # your public name: {public}\n"
    )
}

/// Reads and parses the secret file at `path`.
#[cfg(feature = "fs")]
pub fn read(path: &std::path::Path) -> Result<Keypair, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Writes a new secret file at `path`, readable by its owner only (mode 0600).
/// An existing file is never replaced: that is [`SecretFileError::Exists`].
#[cfg(feature = "fs")]
pub fn create(path: &std::path::Path, keypair: &Keypair) -> Result<(), SecretFileError> {
    use std::io::Write as _;
    let io = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => SecretFileError::Exists(path.to_owned()),
        _ => io(e),
    })?;
    file.write_all(format(keypair).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as `ssb-keys` writes it, for seed 01..01, whose public key
    /// (8a88e3dd..) is recorded in tests/vectors/shs1-js-transcripts.json.
    const SSB_KEYS_FILE: &str = r#"# this is your SECRET name.
# this name gives you magical powers.
# with it you can mark your messages so that your friends can verify
# that they really did come from you.
#
# if any one learns this name, they can use it to destroy your identity
# NEVER show this to anyone!!!

{
  "curve": "ed25519",
  "public": "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=.ed25519",
  "private": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQGKiOPddAnxlf1S2y08ul1yymcJvx2UEhvzdIgBtA9vXA==.ed25519",
  "id": "@iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=.ed25519"
}

# WARNING! It's vital that you DO NOT edit OR share your secret name
# instead, share your public name
# your public name: @iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=.ed25519
"#;

    #[test]
    fn reads_an_ssb_keys_file() {
        let keypair = parse(SSB_KEYS_FILE).unwrap();
        assert_eq!(keypair.seed(), &[1; 32]);
        assert_eq!(
            keypair.public().to_string(),
            "@iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=.ed25519"
        );
    }

    #[test]
    fn format_parses_back_and_matches_ssb_keys() {
        let keypair = Keypair::from_seed([1; 32]);
        assert_eq!(format(&keypair), SSB_KEYS_FILE);
        assert_eq!(parse(&format(&keypair)).unwrap().seed(), &[1; 32]);
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        let err = |text: &str| parse(text).unwrap_err();
        assert!(matches!(err("# only comments\n"), SecretFileError::Json(_)));
        assert!(matches!(
            err(&SSB_KEYS_FILE.replace("\"curve\": \"ed25519\"", "\"curve\": \"k256\"")),
            SecretFileError::UnsupportedCurve(c) if c == "k256"
        ));
        assert!(matches!(
            err(&SSB_KEYS_FILE.replace("XA==.ed25519\"", "XA==\"")),
            SecretFileError::Field {
                field: "private",
                source: KeyError::UnsupportedSuffix
            }
        ));
        assert!(matches!(
            err(&SSB_KEYS_FILE.replace("\"AQEBAQEB", "\"")),
            SecretFileError::Field {
                field: "private",
                ..
            }
        ));
        // Seed 01.. with a different public half.
        assert!(matches!(
            err(&SSB_KEYS_FILE.replace("AQGKiOPd", "AQGKiOPe")),
            SecretFileError::CorruptPrivateKey
        ));
        let other = Keypair::from_seed([2; 32]).public();
        assert!(matches!(
            err(&SSB_KEYS_FILE.replacen(
                "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=.ed25519\",\n  \"private",
                &format!("{}\",\n  \"private", other.to_ssb_public()),
                1
            )),
            SecretFileError::Mismatch { field: "public" }
        ));
        assert!(matches!(
            err(&SSB_KEYS_FILE.replace("\"id\": \"@", "\"id\": \"")),
            SecretFileError::Field {
                field: "id",
                source: KeyError::MissingSigil
            }
        ));
    }

    #[cfg(feature = "fs")]
    #[test]
    fn create_is_private_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("plugboard-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);

        create(&path, &Keypair::from_seed([3; 32])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path).unwrap().seed(), &[3; 32]);

        let again = create(&path, &Keypair::from_seed([4; 32]));
        assert!(matches!(again, Err(SecretFileError::Exists(p)) if p == path));
        assert_eq!(read(&path).unwrap().seed(), &[3; 32], "file was replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
