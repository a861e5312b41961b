//! `filter`: ends the run (as succeeded) unless the expression is true.
//!
//! ```yaml
//! - id: only-paid
//!   filter: '{{ .event.body.status == "paid" }}'
//! ```

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{CompileCx, Outcome, Step, StepCx, StepDef, StepError, StepOutput};
use crate::expr::Expr;
use crate::flow::node::{Node, Spanned};

pub(super) const DEF: StepDef = StepDef {
    kind: "filter",
    summary: "go on only when the expression is true; otherwise the run ends as succeeded",
    compile,
    schema: |_| schemars::json_schema!({"type": "string", "description": "A jq expression, bare or as `{{ expr }}`."}),
};

struct Filter {
    expr: Expr,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let s: Spanned<String> = cx.parse(node)?;
    Some(Box::new(Filter { expr: cx.expr(&s)? }))
}

impl Step for Filter {
    fn inline(&self) -> bool {
        self.expr.is_bounded()
    }

    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            let expr = self.expr.clone();
            let pass = cx
                .eval(self.expr.is_bounded(), move |ctx| expr.eval_bool(ctx))
                .await?;
            Ok(StepOutput {
                value: serde_json::json!({ "passed": pass }),
                request: None,
                outcome: if pass {
                    Outcome::Continue
                } else {
                    Outcome::succeed()
                },
            })
        }
        .boxed()
    }
}
