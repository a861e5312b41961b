//! `log`: writes a line to Ferry's log; the rendered message is the step's result.
//!
//! ```yaml
//! - id: note
//!   log: 'new customer {{ .event.body.email }}'
//! # or
//! - id: note
//!   log: { message: 'stock low: {{ .steps.stock.body.qty }}', level: warn }
//! ```

use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{CompileCx, Step, StepCx, StepDef, StepError, StepOutput};
use crate::expr::Template;
use crate::flow::node::{Node, Value};

pub(super) const DEF: StepDef = StepDef {
    kind: "log",
    summary: "write a message (a template) to the log",
    compile,
    schema: |g| {
        let full = g.subschema_for::<LogConfig>();
        schemars::json_schema!({"anyOf": [{"type": "string"}, full]})
    },
};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    /// The message, a template.
    message: Node,
    /// `info` (default), `warn` or `error`.
    #[serde(default)]
    level: Option<Level>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Level {
    Info,
    Warn,
    Error,
}

struct Log {
    message: Arc<Template>,
    level: Level,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let (message, level) = match &node.value {
        Value::Map(_) => {
            let c: LogConfig = cx.parse(node)?;
            (cx.template(&c.message)?, c.level.unwrap_or(Level::Info))
        }
        _ => (cx.template(node)?, Level::Info),
    };
    Some(Box::new(Log {
        message: Arc::new(message),
        level,
    }))
}

impl Step for Log {
    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            let t = self.message.clone();
            let value = cx
                .eval(self.message.is_bounded(), move |ctx| t.render(ctx))
                .await?;
            // A secret (or a token derived from one) never reaches the log.
            let text = cx.secrets.scrub_str(&match &value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            match self.level {
                Level::Info => tracing::info!(run = %cx.run_id, step = %cx.step_path, "{text}"),
                Level::Warn => tracing::warn!(run = %cx.run_id, step = %cx.step_path, "{text}"),
                Level::Error => tracing::error!(run = %cx.run_id, step = %cx.step_path, "{text}"),
            }
            Ok(StepOutput {
                value,
                ..Default::default()
            })
        }
        .boxed()
    }
}
