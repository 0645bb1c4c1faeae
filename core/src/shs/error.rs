use crate::keys::PublicKey;

/// Which handshake message a side was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Message 1, 64 bytes: the client's hello.
    ClientHello,
    /// Message 2, 64 bytes: the server's hello.
    ServerHello,
    /// Message 3, 112 bytes: the client's authentication.
    ClientAuth,
    /// The server's owner deciding whether the client may connect.
    Authorization,
    /// Message 4, 80 bytes: the server's acceptance.
    ServerAccept,
}

impl Phase {
    /// Size of the message expected in this phase (0 for a local decision).
    pub const fn message_len(self) -> usize {
        match self {
            Phase::ClientHello | Phase::ServerHello => 64,
            Phase::ClientAuth => 112,
            Phase::Authorization => 0,
            Phase::ServerAccept => 80,
        }
    }
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Phase::ClientHello => "the client hello",
            Phase::ServerHello => "the server hello",
            Phase::ClientAuth => "the client authentication",
            Phase::Authorization => "the authorization decision",
            Phase::ServerAccept => "the server acceptance",
        })
    }
}

/// Why a long-term ed25519 key is unusable. libsodium refuses the same keys
/// in `crypto_sign_ed25519_pk_to_curve25519` and `crypto_sign_verify_detached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    /// The bytes are not the encoding of a curve point.
    #[error("not a point on ed25519")]
    NotAPoint,
    /// The y coordinate is not reduced modulo p.
    #[error("a non-canonical point encoding")]
    NonCanonical,
    /// The point has order 1, 2, 4 or 8: it would make any signature valid.
    #[error("a point of small order")]
    SmallOrder,
    /// The point has a torsion component outside the prime-order subgroup.
    #[error("a point outside the prime-order subgroup")]
    NotTorsionFree,
}

/// Why a handshake failed.
///
/// Three kinds, as in rustls: the peer misbehaved or is on another network
/// (most variants), the local configuration is unusable
/// ([`HandshakeError::InvalidServerKey`]), or the owner misused the API
/// ([`HandshakeError::Finished`], [`HandshakeError::NotAuthorizing`]).
/// Once a handshake failed it stays failed and sends nothing more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A hello's MAC does not verify under our network key.
    #[error("the peer's hello is not for our network key (another network, or not shs1)")]
    NetworkKeyMismatch,
    /// The peer's ephemeral key is of low order: no shared secret.
    #[error("the peer's ephemeral key is of low order")]
    LowOrderEphemeral,
    /// Message 3 did not open: the client expected another server key, or sent garbage.
    #[error(
        "the client's authentication does not open (it dialed another server key, or is not shs1)"
    )]
    ClientAuthUnreadable,
    /// The client's long-term key is unusable.
    #[error("the client's long-term key is {0}")]
    InvalidClientKey(InvalidKey),
    /// The client's signature over the handshake does not verify.
    #[error("the client's signature does not verify")]
    BadClientSignature,
    /// The server's owner refused this client.
    #[error("client {0} is not authorized")]
    Unauthorized(PublicKey),
    /// Message 4 did not open: the server does not hold the key we dialed.
    #[error("the server's acceptance does not open (it does not hold the server key we dialed)")]
    ServerAcceptUnreadable,
    /// The server's signature over the handshake does not verify.
    #[error("the server's signature does not verify")]
    BadServerSignature,
    /// The connection ended in the middle of a message (or before it).
    /// Where a client's handshake ended says why (PROTOCOL §2.2): before
    /// the server's hello, the server is on another network key; after
    /// our authentication, it did not admit us.
    #[error("{}", truncated(*phase, *received, *expected))]
    Truncated {
        /// What was being waited for.
        phase: Phase,
        /// Bytes of it that arrived.
        received: usize,
        /// Bytes it has.
        expected: usize,
    },
    /// The deadline passed.
    #[error("timed out waiting for {0}")]
    TimedOut(Phase),
    /// The client sent more than [`MAX_EARLY_DATA`](super::MAX_EARLY_DATA) bytes
    /// before the server's owner decided on it.
    #[error(
        "the client sent more than {} bytes before being accepted",
        super::MAX_EARLY_DATA
    )]
    TooMuchEarlyData,
    /// The key given to the client as the server's is unusable (local configuration).
    #[error("the server key to dial is {0}")]
    InvalidServerKey(InvalidKey),
    /// Input or a decision arrived after the handshake ended (API misuse).
    #[error("the handshake is already over")]
    Finished,
    /// [`ServerHandshake::authorize`](super::ServerHandshake::authorize) was
    /// called when no decision was asked for (API misuse).
    #[error("no authorization decision is pending")]
    NotAuthorizing,
}

/// What a handshake that ended early says, and, for a client, what to check.
fn truncated(phase: Phase, received: usize, expected: usize) -> String {
    let what = format!("the connection ended after {received} of {expected} bytes of {phase}");
    match (phase, received) {
        (Phase::ServerHello, 0) => format!(
            "{what}: the server did not answer our hello, so it is on another network key \
             (check the network key on both sides) or does not speak shs1"
        ),
        (Phase::ServerAccept, 0) => format!(
            "{what}: the server ended the handshake after our authentication: it did not admit \
             this key (a broker over TCP admits only keys its policy names; a legacy route's \
             plugin decides), a per-key or per-address limit was reached, or the server's key \
             is not the one dialled"
        ),
        _ => what,
    }
}
