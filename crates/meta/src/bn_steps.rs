//! MAML++'s per-step batch-norm weights and biases (Antoniou et al. 2019, section 4): a
//! separate batch-norm gain and shift for every inner step, meta-learned, and not adapted in
//! the inner loop.
//!
//! They are a group of [`crate::MetaParams`]: one `[steps, hidden]` tensor per batch-norm
//! parameter, by its name (`block{i}.bn.weight` and `.bias`; [`init_bn_steps`]); checkpoints
//! store them as `bn_step.<parameter>`. When a learner has them, inner step `s` runs its
//! support pass with set `s`, and the query pass after step `s` uses set `s` too (as the
//! MAML++ code does; with no inner step, set 0); steps beyond the learned sets use the last
//! one. The net's own `block{i}.bn.*` parameters are then not used (their gradient is zero).
//! The native engine computes them; the candle reference refuses them.

use candle_core::{DType, Device, Tensor};
use fewshot_model::{ConvNetConfig, ParamMap, ParamRole, param_specs};

use crate::error::{Error, Result};

/// Prefix of the per-step sets' names in the flat map of a checkpoint.
pub const BN_STEP_PREFIX: &str = "bn_step.";

/// The name of the per-step sets of batch-norm parameter `param` in a checkpoint
/// (`bn_step.block0.bn.weight`).
pub fn bn_step_name(param: &str) -> String {
    format!("{BN_STEP_PREFIX}{param}")
}

/// Per-step sets for every batch-norm gain and shift of `params` (the net's parameters), by
/// its name, each row a copy of the current value: training starts where one shared set would.
pub fn init_bn_steps(config: &ConvNetConfig, params: &ParamMap, steps: usize) -> Result<ParamMap> {
    if steps == 0 {
        return Err(Error::InvalidSetting {
            name: "inner_steps",
            value: "0".into(),
            expected: "at least 1 for per-step batch norm".into(),
        });
    }
    let mut out = ParamMap::new();
    for spec in param_specs(config).into_iter().filter(|s| is_bn(s.role)) {
        let value = params
            .get(&spec.name)
            .ok_or_else(|| Error::Model(fewshot_model::Error::Params(format!("missing parameter `{}`", spec.name))))?;
        out.insert(spec.name.clone(), value.unsqueeze(0)?.repeat((steps, 1))?);
    }
    Ok(out)
}

fn is_bn(role: ParamRole) -> bool {
    matches!(role, ParamRole::BnScale(_) | ParamRole::BnShift(_))
}

/// Per-step sets as numbers: for each batch-norm parameter of [`param_specs`] (in that order),
/// its `[steps, hidden]` values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BnStepTable {
    /// The batch-norm parameters' roles, in order.
    pub roles: Vec<ParamRole>,
    /// `values[p][s * hidden + c]`.
    pub values: Vec<Vec<f64>>,
    /// Learned sets (`k`).
    pub steps: usize,
}

impl BnStepTable {
    /// The table of `sets` (by batch-norm parameter name), checked. Errors name the set as a
    /// checkpoint stores it.
    pub fn from_map(config: &ConvNetConfig, sets: &ParamMap) -> Result<BnStepTable> {
        let bad = |msg: String| Error::Model(fewshot_model::Error::Params(msg));
        let specs: Vec<_> = param_specs(config).into_iter().filter(|s| is_bn(s.role)).collect();
        let (mut roles, mut values, mut steps) = (Vec::new(), Vec::new(), None);
        for spec in &specs {
            let name = bn_step_name(&spec.name);
            let t = sets.get(&spec.name).ok_or_else(|| {
                bad(format!("missing per-step batch-norm set `{name}` (per-step batch norm needs one per parameter)"))
            })?;
            match (t.dims(), steps) {
                ([k, c], None) if *k >= 1 && *c == config.hidden => steps = Some(*k),
                ([k, c], Some(s)) if *k == s && *c == config.hidden => {}
                (dims, _) => {
                    return Err(bad(format!(
                        "per-step batch-norm set `{name}` has shape {dims:?}, expected [steps, {}] with the same \
                         steps for every set",
                        config.hidden
                    )));
                }
            }
            roles.push(spec.role);
            values.push(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?);
        }
        if let Some(extra) = sets.keys().find(|k| !specs.iter().any(|s| s.name == **k)) {
            return Err(bad(format!("unexpected parameter `{}`", bn_step_name(extra))));
        }
        Ok(BnStepTable { roles, values, steps: steps.expect("a net has batch norm") })
    }

    /// The gradients `grads[(s * parameters + p) * hidden + c]` (set-major, as the native
    /// engine gathers them) as tensors `[steps, hidden]` of `dtype`, by parameter name.
    pub fn gradients(&self, config: &ConvNetConfig, grads: &[f64], dtype: DType) -> Result<ParamMap> {
        let (n, hidden) = (self.roles.len(), config.hidden);
        let specs = param_specs(config).into_iter().filter(|s| is_bn(s.role));
        specs
            .enumerate()
            .map(|(p, spec)| {
                let g: Vec<f64> = (0..self.steps)
                    .flat_map(|s| grads[(s * n + p) * hidden..(s * n + p + 1) * hidden].iter().copied())
                    .collect();
                let t = Tensor::from_vec(g, (self.steps, hidden), &Device::Cpu)?.to_dtype(dtype)?;
                Ok((spec.name.clone(), t))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_start_as_copies_and_are_checked() {
        let c = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 2 };
        let params = fewshot_model::init(&c, 0, DType::F64, &Device::Cpu).unwrap();
        let sets = init_bn_steps(&c, &params, 2).unwrap();
        assert_eq!(sets.len(), 4, "weight and bias of two blocks");
        let table = BnStepTable::from_map(&c, &sets).unwrap();
        assert_eq!(table.steps, 2);
        assert_eq!(table.values[0], vec![1.0; 6], "block 0's gain, both steps");
        let mut bad = sets.clone();
        bad.insert("block1.bn.bias".into(), Tensor::zeros((3, 3), DType::F64, &Device::Cpu).unwrap());
        let e = BnStepTable::from_map(&c, &bad).unwrap_err().to_string();
        assert!(e.contains("bn_step.block1.bn.bias") && e.contains("[3, 3]"), "{e}");
        assert!(init_bn_steps(&c, &params, 0).is_err());
    }
}
