//! `map`: builds a value from the context. Its value is the step's result.
//!
//! ```yaml
//! - id: contact
//!   map:
//!     email: '{{ .event.body.email | ascii_downcase }}'
//!     source: web-shop
//! ```

use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;

use super::{CompileCx, Step, StepCx, StepDef, StepError, StepOutput};
use crate::expr::Template;
use crate::flow::node::Node;

pub(super) const DEF: StepDef = StepDef {
    kind: "map",
    summary: "build a value (an object template or one expression); the value is the step's result",
    compile,
    schema: |_| schemars::json_schema!({"description": "A value template: any YAML value whose strings may hold `{{ expr }}`."}),
};

struct Map {
    template: Arc<Template>,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let template = cx.template(node)?;
    Some(Box::new(Map {
        template: Arc::new(template),
    }))
}

impl Step for Map {
    fn inline(&self) -> bool {
        self.template.is_bounded()
    }

    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            if let Template::Literal(v) = &*self.template {
                return Ok(StepOutput {
                    value: v.clone(),
                    ..Default::default()
                });
            }
            let template = self.template.clone();
            let value = cx
                .eval(self.template.is_bounded(), move |ctx| template.render(ctx))
                .await?;
            Ok(StepOutput {
                value,
                ..Default::default()
            })
        }
        .boxed()
    }
}
