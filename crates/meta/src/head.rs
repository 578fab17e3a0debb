//! [`HeadInit`]: how the linear head starts each task's inner loop. `Learned` is MAML's
//! (the head is meta-learned like every other parameter); `Zero` and `Shared` make the model
//! independent of the order of labels and let a model trained on N-way tasks adapt to tasks of
//! any number of classes.
//!
//! A finding the tests pin down: under softmax cross-entropy a shared head is a zero head.
//! Every class starts from the same row, so the row adds one and the same number to every
//! logit, which the softmax ignores; the inner loop's gradients (which see only the
//! probabilities and the differences between rows) are those of a zero head, and the shared
//! row and bias get an exactly zero meta-gradient. The two label alike; `Shared` is kept
//! because it is the published formulation and costs nothing.

use candle_core::Tensor;
use fewshot_model::ParamMap;

use crate::error::{Error, Result};

/// How the linear head starts each task (in a config: `learned`, `zero`, `shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// The meta-learned head, one row per class position (MAML).
    #[default]
    Learned,
    /// A zero head before every inner loop (the head is not meta-learned; its gradient is 0).
    Zero,
    /// One meta-learned row and bias copied to every class: the stored head keeps all its rows
    /// equal (their gradients are tied to the sum over rows), and any number of classes reads
    /// row 0.
    Shared,
    /// Proto-MAML: each task's head is built from the prototypes of its support set, class
    /// `k`'s row `2 c_k` and bias `-|c_k|^2` (Triantafillou et al. 2020); the meta-gradient
    /// goes through them into the feature extractor, and the stored head (kept at zero, like
    /// `Zero`'s) is never read. The engines build it per task ([`crate::InnerLoop::prototypes`]).
    Prototypes,
}

const WEIGHT: &str = "head.weight";
const BIAS: &str = "head.bias";

impl HeadInit {
    /// The parameters a task of `n_way` classes starts from: `params` with its head as this
    /// setting makes it. `Learned` needs a head of `n_way` rows; the others take any `n_way`.
    pub fn task_params(self, params: &ParamMap, n_way: usize) -> Result<ParamMap> {
        let (weight, bias) = head(params)?;
        let rows = weight.dim(0)?;
        let mut out = params.clone();
        match self {
            HeadInit::Learned => {
                if rows != n_way {
                    return Err(Error::InvalidSetting {
                        name: "n_way",
                        value: n_way.to_string(),
                        expected: format!(
                            "{rows}, the classes of the learned head (a `zero` or `shared` head adapts to any number)"
                        ),
                    });
                }
            }
            HeadInit::Zero | HeadInit::Prototypes => {
                out.insert(WEIGHT.into(), Tensor::zeros((n_way, weight.dim(1)?), weight.dtype(), weight.device())?);
                out.insert(BIAS.into(), Tensor::zeros(n_way, bias.dtype(), bias.device())?);
            }
            HeadInit::Shared => {
                out.insert(WEIGHT.into(), weight.narrow(0, 0, 1)?.repeat((n_way, 1))?);
                out.insert(BIAS.into(), bias.narrow(0, 0, 1)?.repeat(n_way)?);
            }
        }
        Ok(out)
    }

    /// Turn the gradient with respect to a task's head into the gradient with respect to the
    /// stored head: unchanged for `Learned`, zero for `Zero`, and for `Shared` every row (and
    /// bias entry) the sum over rows, the gradient of the one shared row.
    pub fn tie_gradients(self, grads: &mut ParamMap) -> Result<()> {
        let (weight, bias) = match self {
            HeadInit::Learned => return Ok(()),
            HeadInit::Zero | HeadInit::Prototypes => {
                let (weight, bias) = head(grads)?;
                (weight.zeros_like()?, bias.zeros_like()?)
            }
            HeadInit::Shared => {
                let (weight, bias) = head(grads)?;
                let rows = weight.dim(0)?;
                (weight.sum_keepdim(0)?.repeat((rows, 1))?, bias.sum_keepdim(0)?.repeat(rows)?)
            }
        };
        grads.insert(WEIGHT.into(), weight);
        grads.insert(BIAS.into(), bias);
        Ok(())
    }
}

fn head(params: &ParamMap) -> Result<(Tensor, Tensor)> {
    let get = |name: &str| {
        params
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Model(fewshot_model::Error::Params(format!("missing parameter `{name}`"))))
    };
    Ok((get(WEIGHT)?, get(BIAS)?))
}
