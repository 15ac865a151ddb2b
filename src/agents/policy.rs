//! A target's runtime record and the effective policy derived from it: a manual hold or an
//! unhandled provider incident blocks dispatch; a handed-off incident, or a target configured
//! so, requires approval; otherwise dispatch is allowed.

use serde::Serialize;

use crate::clock::Timestamp;
use crate::ids::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Policy {
    Allow,
    RequireApproval,
    Blocked,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Allow => "ALLOW",
            Policy::RequireApproval => "REQUIRE_APPROVAL",
            Policy::Blocked => "BLOCKED",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        [Policy::Allow, Policy::RequireApproval, Policy::Blocked]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub reason: String,
    pub by: Option<UserId>,
    pub since: Timestamp,
    pub release_after: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub external_incident_id: String,
    pub owner: String,
    pub note: Option<String>,
    pub at: Timestamp,
    pub by: Option<UserId>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub open: bool,
    pub epoch: i64,
    pub opened_at: Option<Timestamp>,
    pub opened_by: Option<UserId>,
    pub reason: Option<String>,
    pub handoff: Option<Handoff>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewAck {
    pub epoch: i64,
    pub by: Option<UserId>,
    pub at: Timestamp,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeState {
    pub consecutive_failures: i64,
    pub last_at: Option<Timestamp>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
}

/// Everything governance decides from, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub updated_at: Timestamp,
    pub require_approval: bool,
    pub hold: Option<Hold>,
    pub incident: Incident,
    pub policy: Policy,
    pub reasons: Vec<String>,
    pub policy_epoch: i64,
    pub policy_changed_by: Option<UserId>,
    pub policy_changed_at: Option<Timestamp>,
    pub review_ack: Option<ReviewAck>,
    pub probe: ProbeState,
}

/// The effective policy and its reasons, from the inputs alone.
pub fn derive(rt: &Runtime) -> (Policy, Vec<String>) {
    let mut blocked = Vec::new();
    if rt.hold.is_some() {
        blocked.push("MANUAL_HOLD".to_owned());
    }
    if rt.incident.open && rt.incident.handoff.is_none() {
        blocked.push("PROVIDER_INCIDENT".to_owned());
    }
    if !blocked.is_empty() {
        return (Policy::Blocked, blocked);
    }
    let mut approval = Vec::new();
    if rt.incident.open {
        approval.push("PROVIDER_INCIDENT_HANDED_OFF".to_owned());
    }
    if rt.require_approval {
        approval.push("TARGET_REQUIRES_APPROVAL".to_owned());
    }
    if approval.is_empty() {
        (Policy::Allow, Vec::new())
    } else {
        (Policy::RequireApproval, approval)
    }
}

impl Runtime {
    /// Recomputes the policy after a change made by `actor` (None: the system). The epoch moves
    /// only when the effective policy changes; the reasons always follow the inputs.
    pub fn recompute(&mut self, actor: Option<&UserId>, now: Timestamp) {
        let (policy, reasons) = derive(self);
        if policy != self.policy {
            self.policy_epoch += 1;
            self.policy_changed_by = actor.cloned();
            self.policy_changed_at = Some(now);
        }
        self.policy = policy;
        self.reasons = reasons;
    }

    /// The next CAS token: now, but always strictly after the previous one.
    pub fn advance_token(&mut self, now: Timestamp) {
        self.updated_at = Timestamp(now.millis().max(self.updated_at.millis() + 1));
    }

    /// `NOT_REQUIRED` until the policy first changes; then `PENDING` until the current epoch
    /// is acknowledged.
    pub fn review_state(&self) -> &'static str {
        match &self.review_ack {
            _ if self.policy_epoch == 0 => "NOT_REQUIRED",
            Some(a) if a.epoch == self.policy_epoch => "ACKNOWLEDGED",
            _ => "PENDING",
        }
    }

    /// HELD, INCIDENT, DEGRADED (probes failing, no incident yet) or AVAILABLE.
    pub fn availability(&self) -> &'static str {
        if self.hold.is_some() {
            "HELD"
        } else if self.incident.open {
            "INCIDENT"
        } else if self.probe.consecutive_failures > 0 {
            "DEGRADED"
        } else {
            "AVAILABLE"
        }
    }

    pub fn fresh(now: Timestamp, require_approval: bool) -> Runtime {
        let mut rt = Runtime {
            updated_at: now,
            require_approval,
            hold: None,
            incident: Incident {
                open: false,
                epoch: 0,
                opened_at: None,
                opened_by: None,
                reason: None,
                handoff: None,
            },
            policy: Policy::Allow,
            reasons: Vec::new(),
            policy_epoch: 0,
            policy_changed_by: None,
            policy_changed_at: None,
            review_ack: None,
            probe: ProbeState {
                consecutive_failures: 0,
                last_at: None,
                last_ok: None,
                last_error: None,
            },
        };
        let (policy, reasons) = derive(&rt);
        rt.policy = policy;
        rt.reasons = reasons;
        rt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random sequences of input changes: whatever the order, the policy is always the one the
    /// inputs imply, the epoch moves exactly when the effective policy changes, the token only
    /// ever grows, and a review acknowledged for an old epoch never counts for a newer one.
    #[test]
    fn policy_state_machine_invariants_hold_for_random_histories() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let someone = UserId::generate();
        for history in 0..500 {
            let mut now = Timestamp(1_000);
            let mut rt = Runtime::fresh(now, next(2) == 0);
            for _ in 0..60 {
                let before = rt.clone();
                now = Timestamp(now.millis() + next(3) as i64);
                match next(6) {
                    0 => {
                        rt.hold = Some(Hold {
                            reason: "r".into(),
                            by: None,
                            since: now,
                            release_after: None,
                        })
                    }
                    1 => rt.hold = None,
                    2 => {
                        rt.incident.open = true;
                        rt.incident.epoch += 1;
                        rt.incident.handoff = None;
                    }
                    3 if rt.incident.open => {
                        rt.incident.handoff = Some(Handoff {
                            external_incident_id: "INC".into(),
                            owner: "ops".into(),
                            note: None,
                            at: now,
                            by: None,
                        })
                    }
                    4 => rt.incident.open = false,
                    _ => {
                        rt.review_ack = Some(ReviewAck {
                            epoch: rt.policy_epoch,
                            by: None,
                            at: now,
                            note: None,
                        })
                    }
                }
                rt.recompute(Some(&someone), now);
                rt.advance_token(now);
                let (policy, reasons) = derive(&rt);
                assert_eq!(
                    (rt.policy, &rt.reasons),
                    (policy, &reasons),
                    "history {history}"
                );
                let changed = before.policy != rt.policy;
                assert_eq!(
                    rt.policy_epoch,
                    before.policy_epoch + i64::from(changed),
                    "history {history}"
                );
                assert!(rt.updated_at > before.updated_at, "history {history}");
                if changed {
                    assert_ne!(
                        rt.review_state(),
                        "ACKNOWLEDGED",
                        "a new epoch needs a new review"
                    );
                }
            }
        }
    }

    #[test]
    fn policy_follows_inputs_and_epoch_moves_only_on_change() {
        let t = Timestamp(1_000);
        let mut rt = Runtime::fresh(t, false);
        assert_eq!(
            (rt.policy, rt.review_state()),
            (Policy::Allow, "NOT_REQUIRED")
        );
        rt.hold = Some(Hold {
            reason: "x".into(),
            by: None,
            since: t,
            release_after: None,
        });
        let (a, b) = (UserId::generate(), UserId::generate());
        rt.recompute(Some(&a), t);
        assert_eq!((rt.policy, rt.policy_epoch), (Policy::Blocked, 1));
        rt.incident.open = true;
        rt.recompute(Some(&b), t);
        assert_eq!(rt.policy_epoch, 1, "still blocked: same epoch");
        assert_eq!(rt.reasons, ["MANUAL_HOLD", "PROVIDER_INCIDENT"]);
        assert_eq!(rt.policy_changed_by.as_ref(), Some(&a));
        rt.hold = None;
        rt.incident.handoff = Some(Handoff {
            external_incident_id: "INC-1".into(),
            owner: "ops".into(),
            note: None,
            at: t,
            by: None,
        });
        rt.recompute(None, t);
        assert_eq!((rt.policy, rt.policy_epoch), (Policy::RequireApproval, 2));
        assert_eq!(rt.review_state(), "PENDING");
        let before = rt.updated_at;
        rt.advance_token(before);
        assert!(
            rt.updated_at > before,
            "strictly increasing even within one millisecond"
        );
    }
}
