//! Secrets: API keys and invitation tokens, how they are generated, and the hashes stored in
//! their place.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "mk_";
/// The prefix of every invitation token.
pub const INVITATION_TOKEN_PREFIX: &str = "mkinv_";
/// Characters of the secret part used as the public lookup handle (shown in masks).
const LOOKUP_LEN: usize = 12;
/// 256 random bits in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// A freshly generated secret (`prefix` + 256 random bits, base64url).
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of the whole secret. A fast hash is right here: the secret has 256 random bits, so
/// there is nothing to brute-force, and a slow hash would only slow every request.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// An API key split into what is stored: the public lookup handle and the parts a mask shows.
pub struct ParsedKey<'a> {
    pub raw: &'a str,
    pub lookup: &'a str,
}

/// Checks the shape of a presented API key: `mk_` and 43 base64url characters.
pub fn parse_api_key(raw: &str) -> Option<ParsedKey<'_>> {
    let secret = raw.strip_prefix(API_KEY_PREFIX)?;
    let well_formed = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| ParsedKey {
        raw,
        lookup: &secret[..LOOKUP_LEN],
    })
}

/// `mk_AbCdEfGh…wxyz`: enough to recognise a key, useless to use it.
pub fn mask_key(lookup: &str, last4: &str) -> String {
    format!("{API_KEY_PREFIX}{}…{last4}", &lookup[..8])
}

pub fn last4(raw: &str) -> &str {
    &raw[raw.len() - 4..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_are_distinct() {
        let a = generate_secret(API_KEY_PREFIX);
        let b = generate_secret(API_KEY_PREFIX);
        assert_ne!(a, b);
        let parsed = parse_api_key(&a).expect("generated key parses");
        assert_eq!(parsed.lookup, &a[3..15]);
        assert!(parse_api_key("mk_short").is_none());
        assert!(parse_api_key(&a.replace("mk_", "xx_")).is_none());
        assert!(mask_key(parsed.lookup, last4(&a)).ends_with(last4(&a)));
    }
}
