//! Adam on a parameter map, with its state exposed for checkpoints.

use candle_core::Tensor;
use fewshot_model::{ParamMap, ParamVars};

use crate::error::Result;

/// Adam (Kingma & Ba), as `torch.optim.Adam` with default betas and eps and no weight decay.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Steps taken.
    pub step: u64,
    /// First moments by parameter name.
    pub m: ParamMap,
    /// Second moments by parameter name.
    pub v: ParamMap,
}

impl Adam {
    /// A fresh optimiser with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8).
    pub fn new(lr: f64) -> Adam {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 0, m: ParamMap::new(), v: ParamMap::new() }
    }

    /// One update of every parameter that has a gradient, over `groups` of `(prefix,
    /// variables, their gradients)`: the moments of a variable are kept under `prefix` + its
    /// name (the names checkpoints store, see [`crate::MetaParams::to_map`]).
    pub fn step(&mut self, groups: &[(&str, &ParamVars, &ParamMap)]) -> Result<()> {
        self.step += 1;
        let bias1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias2 = 1.0 - self.beta2.powi(self.step as i32);
        let all =
            groups.iter().flat_map(|(prefix, vars, grads)| vars.iter().map(move |(k, v)| (*prefix, k, v, *grads)));
        for (prefix, key, var, grads) in all {
            let Some(g) = grads.get(key) else { continue };
            let name = &format!("{prefix}{key}");
            let m = match self.m.get(name) {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let denom = ((&v / bias2)?.sqrt()? + self.eps)?;
            let update = ((&m / bias1)? / denom)?;
            let new: Tensor = (var.as_tensor() - (update * self.lr)?)?;
            var.set(&new.detach())?;
            self.m.insert(name.clone(), m.detach());
            self.v.insert(name.clone(), v.detach());
        }
        Ok(())
    }
}
