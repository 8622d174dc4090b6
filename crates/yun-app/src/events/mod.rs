//! What happens without a caller waiting: async invocations with SCF's retries and the
//! dead-letter queue (`async_invoke`), and the triggers that feed them: timers (`cron`,
//! `timers`) and changes to documents (`changes`). Every trigger delivery is an async
//! invocation on the event bus, so all of them share the retry policy and the DLQ.

pub(crate) mod async_invoke;
mod changes;
pub(crate) mod cron;
mod timers;
mod triggers;

pub use changes::ChangeSource;
pub use triggers::NewTrigger;

use yun_types::YunError;

/// Parses a UTC offset as `+08:00` or `-05:30`.
pub(crate) fn utc_offset(text: &str) -> Result<time::UtcOffset, YunError> {
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(text, &format).map_err(|_| {
        YunError::invalid_param(format!(
            "timer_utc_offset must look like +08:00 or -05:30, not {text:?}"
        ))
    })
}
