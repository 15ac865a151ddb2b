//! Refused mutations by a known key are audited, but a flood of them must not become a flood of
//! fsynced audit rows: the first refusal of a key on a route in a minute is written at once;
//! the rest of that minute are counted here and written as one row (`auth.denied.repeated`,
//! with the count) once the minute is over.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::auth::Actor;
use crate::clock::Timestamp;
use crate::ids::KeyId;

/// Counts kept at most; past that the oldest minute's are written at once.
const MAX_ENTRIES: usize = 10_000;
pub(super) const MINUTE_MS: i64 = 60_000;

/// Refusals counted but not yet written, by key, route and minute.
#[derive(Default)]
pub struct RefusalDigest(Mutex<HashMap<(KeyId, String, i64), Repeated>>);

/// The refusals of one key on one route in one minute beyond the first.
#[derive(Debug, Clone)]
pub struct Repeated {
    pub actor: Actor,
    pub route: String,
    pub code: &'static str,
    pub minute: i64,
    pub count: u64,
}

impl RefusalDigest {
    /// Notes a refusal. `true`: it is the first of its key, route and minute, to be written
    /// now; `false`: counted, to be written by [`Self::due`].
    pub fn note(&self, actor: &Actor, route: &str, code: &'static str, now: Timestamp) -> bool {
        let Some(key) = actor.key_id.clone() else {
            return true;
        };
        let minute = now.millis().div_euclid(MINUTE_MS);
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.get_mut(&(key.clone(), route.to_owned(), minute)) {
            Some(r) => {
                r.count += 1;
                false
            }
            None => {
                if entries.len() >= MAX_ENTRIES {
                    // Bounded: a map this full is written out by the next pass; meanwhile
                    // every new (key, route) is written as it comes.
                    return true;
                }
                entries.insert(
                    (key, route.to_owned(), minute),
                    Repeated {
                        actor: actor.clone(),
                        route: route.to_owned(),
                        code,
                        minute,
                        count: 0,
                    },
                );
                true
            }
        }
    }

    /// Takes the counts of minutes before `now`'s (all of them when `all`), leaving the rest;
    /// only those with refusals beyond the first are returned.
    pub fn due(&self, now: Timestamp, all: bool) -> Vec<Repeated> {
        let current = now.millis().div_euclid(MINUTE_MS);
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = entries.len() >= MAX_ENTRIES;
        let mut out = Vec::new();
        entries.retain(|_, r| {
            if all || full || r.minute < current {
                if r.count > 0 {
                    out.push(r.clone());
                }
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;

    #[test]
    fn the_first_of_a_minute_is_written_the_rest_counted() {
        let digest = RefusalDigest::default();
        let actor = Actor {
            tenant_id: TenantId::generate(),
            user_id: None,
            key_id: Some(KeyId::generate()),
            request_id: None,
            client_request_id: None,
        };
        let t = Timestamp(10 * MINUTE_MS + 5);
        assert!(digest.note(&actor, "POST /v1/keys", "unauthorized", t));
        for _ in 0..999 {
            assert!(!digest.note(&actor, "POST /v1/keys", "unauthorized", t));
        }
        assert!(digest.note(&actor, "DELETE /v1/keys/{id}", "unauthorized", t));
        assert!(digest.due(t, false).is_empty(), "the minute is not over");
        let next = Timestamp(11 * MINUTE_MS);
        assert!(digest.note(&actor, "POST /v1/keys", "unauthorized", next));
        let due = digest.due(next, false);
        assert_eq!(due.len(), 1, "only the route with repeats: {due:?}");
        assert_eq!((due[0].count, due[0].minute), (999, 10));
        assert!(
            digest.due(next, true).is_empty(),
            "the new minute has no repeats yet"
        );
    }
}
