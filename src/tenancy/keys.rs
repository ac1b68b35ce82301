//! API keys: the token format `maas_<id>_<secret>`, generation, SHA-256 digests and their
//! constant-time comparison. A digest never appears in `Debug` output, logs or messages.
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

const PREFIX: &str = "maas_";
/// Length of a key id: `[a-z0-9]{10}`.
pub const ID_LEN: usize = 10;
/// Length of the secret: 32 random bytes in lower-case base32 without padding.
pub const SECRET_LEN: usize = 52;
const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// The SHA-256 of a token. Compared only in constant time; its `Debug` form hides the bytes.
#[derive(Clone, Copy)]
pub struct Digest(pub(crate) [u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(<redacted>)")
    }
}

impl Digest {
    pub fn of(token: &[u8]) -> Digest {
        let d = ring::digest::digest(&ring::digest::SHA256, token);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// Constant-time equality of the 32 bytes.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// 64 lower-case hex digits (to print once when a key is generated).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 lower-case hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
        }
        Some(Digest(out))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// A valid key id: 10 characters `[a-z0-9]`.
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The key id of a well-formed token, `None` for anything else.
pub fn token_id(token: &str) -> Option<&str> {
    if token.len() != TOKEN_LEN || !token.starts_with(PREFIX) {
        return None;
    }
    let id = &token[PREFIX.len()..PREFIX.len() + ID_LEN];
    let rest = &token[PREFIX.len() + ID_LEN..];
    let secret = rest.strip_prefix('_')?;
    let secret_ok = secret.bytes().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c));
    (valid_id(id) && secret_ok).then_some(id)
}

/// RFC 4648 base32, lower case, no padding.
fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A new token, with `id` or a random one. Returns (token, id, digest).
pub fn generate(id: Option<&str>) -> Result<(String, String, Digest), String> {
    let rng = SystemRandom::new();
    let id = match id {
        Some(id) if valid_id(id) => id.to_string(),
        Some(id) => return Err(format!("--id must be {ID_LEN} characters [a-z0-9], got '{id}'")),
        None => {
            const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let mut out = String::with_capacity(ID_LEN);
            while out.len() < ID_LEN {
                let mut b = [0u8; 16];
                rng.fill(&mut b).map_err(|_| "the system random generator failed".to_string())?;
                // 252 = 7 * 36: rejection sampling keeps every character equally likely.
                out.extend(b.iter().filter(|&&x| x < 252).map(|&x| ALPHABET[(x % 36) as usize] as char));
                out.truncate(ID_LEN);
            }
            out
        }
    };
    let mut secret = [0u8; 32];
    rng.fill(&mut secret).map_err(|_| "the system random generator failed".to_string())?;
    let token = format!("{PREFIX}{id}_{}", base32(&secret));
    let digest = Digest::of(token.as_bytes());
    Ok((token, id, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let (token, id, digest) = generate(None).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(token_id(&token), Some(id.as_str()));
        assert!(Digest::of(token.as_bytes()).ct_eq(&digest));
        assert!(Digest::from_hex(&digest.to_hex()).unwrap().ct_eq(&digest));
        assert_eq!(format!("{digest:?}"), "Digest(<redacted>)");
        let (t2, id2, _) = generate(Some("k3v9q2m7xa")).unwrap();
        assert_eq!(id2, "k3v9q2m7xa");
        assert!(t2.starts_with("maas_k3v9q2m7xa_"));
        assert!(generate(Some("BAD")).is_err());
        assert_eq!(token_id("maas_k3v9q2m7xa_short"), None);
        assert_eq!(token_id(&token.to_uppercase()), None);
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(Digest::from_hex(&"A".repeat(64)).map(|d| d.0), None);
    }
}
