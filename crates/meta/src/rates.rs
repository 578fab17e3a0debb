//! MAML++'s learned per-layer, per-step inner learning rates (LSLR; Antoniou et al. 2019,
//! section 4): one SGD step size per parameter tensor and inner step, meta-learned with the
//! net's parameters.
//!
//! The rates are a group of [`crate::MetaParams`]: one tensor of shape `[steps]` per net
//! parameter, by its name ([`init_rates`]); checkpoints store them as `inner_lr.<parameter>`.
//! The optimiser, checkpoints and resume carry them like the net's parameters. When a
//! learner has them, both engines' inner loops use them instead of the scalar `inner_lr`, and
//! meta-gradients include their gradients. An inner step
//! beyond the learned ones (evaluation with more steps than training) takes the last learned
//! rate of each tensor.

use candle_core::{DType, Device, Tensor};
use fewshot_model::{ConvNetConfig, ParamMap, param_specs};

use crate::error::{Error, Result};

/// Prefix of the rates' names in the flat map of a checkpoint.
pub const RATE_PREFIX: &str = "inner_lr.";

/// The name of the learned rates of parameter `param` in a checkpoint
/// (`inner_lr.block0.conv.weight`).
pub fn rate_name(param: &str) -> String {
    format!("{RATE_PREFIX}{param}")
}

/// Learned rates for every parameter of `config`'s net, by its name, each `[steps]` and filled
/// with `inner_lr` (MAML++'s initialisation: training starts as plain MAML).
pub fn init_rates(
    config: &ConvNetConfig,
    steps: usize,
    inner_lr: f64,
    dtype: DType,
    device: &Device,
) -> Result<ParamMap> {
    if steps == 0 {
        return Err(Error::InvalidSetting {
            name: "inner_steps",
            value: "0".into(),
            expected: "at least 1 for learned inner learning rates".into(),
        });
    }
    param_specs(config)
        .into_iter()
        .map(|spec| Ok((spec.name.clone(), Tensor::full(inner_lr, steps, device)?.to_dtype(dtype)?)))
        .collect()
}

/// Learned rates as numbers: for each parameter of [`param_specs`] (in that order), its rate
/// at each learned step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateTable {
    /// `values[p][s]`: the rate of parameter `p` at step `s`.
    pub values: Vec<Vec<f64>>,
    /// Learned steps (`k`).
    pub steps: usize,
}

impl RateTable {
    /// The table of `rates` (by net parameter name), checked: one `[k]` tensor per parameter,
    /// the same `k >= 1` for all. Errors name the rate as a checkpoint stores it.
    pub fn from_map(config: &ConvNetConfig, rates: &ParamMap) -> Result<RateTable> {
        let bad = |msg: String| Error::Model(fewshot_model::Error::Params(msg));
        let specs = param_specs(config);
        let mut values = Vec::with_capacity(specs.len());
        for spec in &specs {
            let name = rate_name(&spec.name);
            let t = rates.get(&spec.name).ok_or_else(|| {
                bad(format!("missing learned rate `{name}` (learned inner rates need one per parameter)"))
            })?;
            let v: Vec<f64> = match t.dims() {
                [k] if *k >= 1 => t.to_dtype(DType::F64)?.to_vec1()?,
                dims => return Err(bad(format!("learned rate `{name}` has shape {dims:?}, expected [steps]"))),
            };
            values.push(v);
        }
        if let Some(extra) = rates.keys().find(|k| !specs.iter().any(|s| s.name == **k)) {
            return Err(bad(format!("unexpected parameter `{}`", rate_name(extra))));
        }
        let steps = values[0].len();
        if let Some((spec, v)) = specs.iter().zip(&values).find(|(_, v)| v.len() != steps) {
            return Err(bad(format!(
                "learned rate `{}` has {} steps, `{}` has {steps}: all must have the same",
                rate_name(&spec.name),
                v.len(),
                rate_name(&specs[0].name)
            )));
        }
        Ok(RateTable { values, steps })
    }

    /// The learned step that inner step `step` (0-based) uses: itself, or the last one.
    pub fn step_index(&self, step: usize) -> usize {
        step.min(self.steps - 1)
    }

    /// The rate gradients `grads[p * steps + s]` as tensors of `dtype`, by parameter name.
    pub fn gradients(&self, config: &ConvNetConfig, grads: &[f64], dtype: DType) -> Result<ParamMap> {
        param_specs(config)
            .iter()
            .enumerate()
            .map(|(p, spec)| {
                let g = grads[p * self.steps..(p + 1) * self.steps].to_vec();
                Ok((spec.name.clone(), Tensor::from_vec(g, self.steps, &Device::Cpu)?.to_dtype(dtype)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConvNetConfig {
        ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 2 }
    }

    #[test]
    fn rates_sit_beside_the_parameters_and_are_checked() {
        let c = config();
        let net = fewshot_model::init(&c, 0, DType::F32, &Device::Cpu).unwrap();
        let mut params = crate::MetaParams::from(net);
        params.check(&c).unwrap();
        assert!(params.rates.is_none());
        params.rates = Some(init_rates(&c, 3, 0.4, DType::F32, &Device::Cpu).unwrap());
        params.check(&c).unwrap();
        let rates = params.rates.clone().unwrap();
        assert_eq!(params.net.len(), param_specs(&c).len());
        assert_eq!(rates.len(), params.net.len());
        let table = RateTable::from_map(&c, &rates).unwrap();
        assert_eq!(table.steps, 3);
        assert!(table.values.iter().flatten().all(|&v| (v - 0.4).abs() < 1e-7));
        assert_eq!((table.step_index(1), table.step_index(7)), (1, 2), "later steps take the last rate");

        // One rate missing, or of another length: refused, naming it as a checkpoint does.
        let flat = params.to_map();
        let mut missing = flat.clone();
        missing.remove("inner_lr.head.bias");
        let e = crate::MetaParams::from_map(&c, &missing).unwrap_err().to_string();
        assert!(e.contains("inner_lr.head.bias"), "{e}");
        let mut uneven = flat.clone();
        uneven.insert("inner_lr.head.bias".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
        let e = crate::MetaParams::from_map(&c, &uneven).unwrap_err().to_string();
        assert!(e.contains("inner_lr.head.bias") && e.contains("same"), "{e}");
        assert!(init_rates(&c, 0, 0.4, DType::F32, &Device::Cpu).is_err());
    }
}
