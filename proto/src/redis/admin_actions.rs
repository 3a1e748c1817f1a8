//! Operators' bulk actions on Redis (docs/queue-protocol.md §Admin actions): `dead_bulk.lua`
//! re-queues or dismisses the dead letters matching a filter, `cancel_queued.lua` cancels a
//! tenant's queued jobs; each bounded per call and audited per job, in one script.

use super::RedisQueue;
use super::reply::{array, at, int, job_id, text};
use super::scripts::SCRIPTS;
use crate::admin_jobs::{CANCEL_SCAN, CancelQueuedOutcome, MAX_CANCEL};
use crate::dead_letters::{BULK_SCAN, BulkAction, BulkOutcome, DeadFilter, MAX_BULK};
use crate::error::QueueError;
use crate::job::{JobId, Millis};
use crate::keys::parse_list_member;
use crate::workers::AUDIT_MAXLEN;

fn cursor_of(v: &redis::Value) -> Result<Option<String>, QueueError> {
    let c = text(v)?;
    Ok((!c.is_empty()).then_some(c))
}

impl RedisQueue {
    pub(super) async fn bulk_dead_impl(
        &self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<BulkOutcome, QueueError> {
        let start = match cursor {
            Some(c) if crate::queue::is_event_cursor(c) => format!("({c}"),
            Some(c) => return Err(QueueError::InvalidCursor(c.to_owned())),
            None => "-".to_owned(),
        };
        let k = &self.keys;
        let opt = |t: Option<Millis>| t.map_or_else(String::new, |t| t.to_string());
        let mut inv = SCRIPTS.dead_bulk.prepare_invoke();
        inv.key(k.dead_letters())
            .key(k.audit())
            .arg(k.prefix())
            .arg(action.as_str())
            .arg(start)
            .arg(MAX_BULK)
            .arg(BULK_SCAN)
            .arg(filter.tenant.as_deref().unwrap_or(""))
            .arg(opt(filter.older_than))
            .arg(opt(filter.newer_than))
            .arg(now)
            .arg(self.maxlen())
            .arg(AUDIT_MAXLEN)
            .arg(actor);
        if action == BulkAction::Requeue {
            for _ in 0..MAX_BULK {
                inv.arg(JobId::new().to_string());
            }
        }
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        let affected = array(at(parts, 0)?)?
            .iter()
            .map(|pair| {
                let pair = array(pair)?;
                let new = text(at(pair, 1)?)?;
                let new = if new.is_empty() {
                    None
                } else {
                    Some(job_id(at(pair, 1)?)?)
                };
                Ok((job_id(at(pair, 0)?)?, new))
            })
            .collect::<Result<Vec<_>, QueueError>>()?;
        let skipped_chain_turns = array(at(parts, 1)?)?
            .iter()
            .map(job_id)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BulkOutcome {
            affected,
            skipped_chain_turns,
            next_cursor: cursor_of(at(parts, 2)?)?,
        })
    }

    pub(super) async fn cancel_queued_impl(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<CancelQueuedOutcome, QueueError> {
        let upper = match cursor {
            Some(c) => {
                parse_list_member(c)?;
                format!("({c}")
            }
            None => "+".to_owned(),
        };
        let k = &self.keys;
        let mut inv = SCRIPTS.cancel_queued.prepare_invoke();
        inv.key(k.tenant_jobs(tenant))
            .key(k.audit())
            .arg(k.prefix())
            .arg(tenant)
            .arg(upper)
            .arg(MAX_CANCEL)
            .arg(CANCEL_SCAN)
            .arg(now)
            .arg(self.retention_s())
            .arg(self.maxlen())
            .arg(AUDIT_MAXLEN)
            .arg(actor);
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        Ok(CancelQueuedOutcome {
            canceled: array(at(parts, 0)?)?
                .iter()
                .map(job_id)
                .collect::<Result<Vec<_>, _>>()?,
            running: u64::try_from(int(at(parts, 1)?)?).unwrap_or(0),
            next_cursor: cursor_of(at(parts, 2)?)?,
        })
    }
}
