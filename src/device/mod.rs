//! Device authorization (OAuth 2.0 Device Authorization Grant, RFC 8628) for CLIs and MCP
//! clients: `handlers.rs` serves the client side (`/v1/auth/device`, `/v1/auth/device/token`)
//! and what a key may always ask about itself (`/v1/auth/whoami`, `/v1/auth/logout`);
//! `page.rs` the verification page people open (`/device`); `store.rs` the SQL. Codes, page
//! session tokens and keys are stored only as hashes.

pub mod handlers;
pub mod page;
pub mod store;

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;

use crate::clock::Timestamp;

/// RFC 8628 §6.1: consonants only (no vowels: no words; no look-alikes such as 0/O, 1/I).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// A fresh user code, normalised (8 letters, no hyphen).
pub fn new_user_code() -> String {
    let mut rng = rand::rng();
    (0..USER_CODE_LEN)
        .map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())]))
        .collect()
}

/// A user code as people type it (any case, with or without the hyphen, spaces around) in its
/// stored form; `None` if it cannot be one.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// A user code as shown: `XXXX-XXXX`.
pub fn display_user_code(code: &str) -> String {
    match code.split_at_checked(USER_CODE_LEN / 2) {
        Some((a, b)) => format!("{a}-{b}"),
        None => code.to_owned(),
    }
}

/// Wrong user codes allowed per address, and per page session, in a window.
pub const MAX_GUESSES: u32 = 10;
pub const GUESS_WINDOW_MS: i64 = 15 * 60 * 1000;
const MAX_TRACKED: usize = 100_000;

/// Counts wrong user codes by who entered them (an address, a session), so that guessing a
/// pending code is slow: after [`MAX_GUESSES`] in [`GUESS_WINDOW_MS`] the page refuses codes
/// from that address or session until the window ends.
#[derive(Default)]
pub struct Guesses(Mutex<HashMap<String, (Timestamp, u32)>>);

impl Guesses {
    /// When the first of `who` may try again, if any of them is over the limit.
    pub fn blocked_until(&self, who: &[String], now: Timestamp) -> Option<Timestamp> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        who.iter()
            .filter_map(|w| map.get(w))
            .filter(|(start, n)| *n >= MAX_GUESSES && start.plus_ms(GUESS_WINDOW_MS) > now)
            .map(|(start, _)| start.plus_ms(GUESS_WINDOW_MS))
            .max()
    }

    /// Records one wrong code for each of `who`.
    pub fn wrong(&self, who: &[String], now: Timestamp) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (start, _)| start.plus_ms(GUESS_WINDOW_MS) > now);
        }
        for w in who {
            let entry = map.entry(w.clone()).or_insert((now, 0));
            if entry.0.plus_ms(GUESS_WINDOW_MS) <= now {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_typed_loosely_and_stored_strictly() {
        let code = new_user_code();
        assert_eq!(code.len(), 8);
        let shown = display_user_code(&code);
        assert_eq!(normalize_user_code(&shown).as_deref(), Some(code.as_str()));
        assert_eq!(
            normalize_user_code(&format!(" {} ", shown.to_lowercase())).as_deref(),
            Some(code.as_str())
        );
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(
            normalize_user_code("BCDF-GHJA"),
            None,
            "vowels are never issued"
        );
        assert_eq!(normalize_user_code("ＢＣＤＦ-ＧＨＪＫ"), None);
    }

    #[test]
    fn guessing_is_limited_per_window() {
        let g = Guesses::default();
        let who = ["ip:127.0.0.1".to_owned()];
        let t = Timestamp(1_000_000);
        for _ in 0..MAX_GUESSES {
            assert_eq!(g.blocked_until(&who, t), None);
            g.wrong(&who, t);
        }
        assert_eq!(g.blocked_until(&who, t), Some(t.plus_ms(GUESS_WINDOW_MS)));
        let later = t.plus_ms(GUESS_WINDOW_MS);
        assert_eq!(g.blocked_until(&who, later), None);
        g.wrong(&who, later);
        assert_eq!(g.blocked_until(&who, later), None, "a new window starts");
    }
}
