//! The ordered parameter map, its PyTorch-style initialisation and safetensors bytes.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::shape::ConvNetConfig;

/// Parameters by name, in a fixed (sorted) order so iteration, saving and gradients come out
/// the same every run.
pub type ParamMap = BTreeMap<String, Tensor>;

/// Name of block `i`'s parameter `what` (`conv.weight`, `conv.bias`, `bn.weight`, `bn.bias`).
pub fn block_param(i: usize, what: &str) -> String {
    format!("block{i}.{what}")
}

/// What a parameter is in the net (see [`param_specs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    /// Block `i`'s conv weight `[hidden, c_in, 3, 3]`.
    ConvWeight(usize),
    /// Block `i`'s conv bias `[hidden]` (cancelled by batch norm: its gradient is zero).
    ConvBias(usize),
    /// Block `i`'s batch-norm scale `[hidden]`.
    BnScale(usize),
    /// Block `i`'s batch-norm shift `[hidden]`.
    BnShift(usize),
    /// The linear head's weight `[n_way, features]`.
    HeadWeight,
    /// The linear head's bias `[n_way]`.
    HeadBias,
}

/// One parameter of the net: its name in a [`ParamMap`], its shape and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name in the parameter map (`block0.conv.weight`, `head.bias`, ...).
    pub name: String,
    /// Shape, without a task dimension.
    pub shape: Vec<usize>,
    /// What it is.
    pub role: ParamRole,
    /// Fan-in of the layer it belongs to (for the default initialisation).
    pub fan_in: usize,
}

/// Every parameter of `config`'s net, in the order [`init`] draws them: the one place that
/// knows the parameters' names and shapes ([`init`], [`check_params`] and the engine's
/// [`crate::engine::Layout`] read them from here).
pub fn param_specs(config: &ConvNetConfig) -> Vec<ParamSpec> {
    let mut specs = Vec::with_capacity(4 * config.depth + 2);
    let spec = |name: String, shape: Vec<usize>, role, fan_in| ParamSpec { name, shape, role, fan_in };
    let (h, mut c_in) = (config.hidden, config.in_channels);
    for i in 0..config.depth {
        let fan_in = c_in * 9;
        specs.push(spec(block_param(i, "conv.weight"), vec![h, c_in, 3, 3], ParamRole::ConvWeight(i), fan_in));
        specs.push(spec(block_param(i, "conv.bias"), vec![h], ParamRole::ConvBias(i), fan_in));
        specs.push(spec(block_param(i, "bn.weight"), vec![h], ParamRole::BnScale(i), h));
        specs.push(spec(block_param(i, "bn.bias"), vec![h], ParamRole::BnShift(i), h));
        c_in = h;
    }
    let features = config.features();
    specs.push(spec("head.weight".to_owned(), vec![config.n_way, features], ParamRole::HeadWeight, features));
    specs.push(spec("head.bias".to_owned(), vec![config.n_way], ParamRole::HeadBias, features));
    specs
}

/// Initialise the net's parameters from `seed` the way PyTorch's defaults do:
/// `Conv2d` and `Linear` weights and biases uniform in `±1/sqrt(fan_in)` (kaiming uniform
/// with a = sqrt(5)), `BatchNorm2d` scale 1 and shift 0.
///
/// # Shapes
/// See [`param_specs`]: `block{i}.conv.weight`: `[hidden, c_in, 3, 3]`; `block{i}.conv.bias`,
/// `block{i}.bn.weight`, `block{i}.bn.bias`: `[hidden]`; `head.weight`: `[n_way, features]`;
/// `head.bias`: `[n_way]`.
pub fn init(config: &ConvNetConfig, seed: u64, dtype: DType, device: &Device) -> Result<ParamMap> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = ParamMap::new();
    for spec in param_specs(config) {
        let tensor = match spec.role {
            ParamRole::BnScale(_) => Tensor::ones(spec.shape, dtype, device)?,
            ParamRole::BnShift(_) => Tensor::zeros(spec.shape, dtype, device)?,
            _ => {
                let bound = 1.0 / (spec.fan_in as f64).sqrt();
                let n: usize = spec.shape.iter().product();
                let data: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
                Tensor::from_vec(data, spec.shape, device)?.to_dtype(dtype)?
            }
        };
        params.insert(spec.name, tensor);
    }
    Ok(params)
}

/// Check that `params` has exactly the names and shapes `config` needs (without a task
/// dimension); the error names the first parameter that differs.
pub fn check_params(config: &ConvNetConfig, params: &ParamMap) -> Result<()> {
    config.validate()?;
    let mut specs = param_specs(config);
    specs.sort_by(|a, b| a.name.cmp(&b.name)); // report the first difference in the map's order
    for spec in &specs {
        match params.get(&spec.name) {
            None => return Err(Error::Params(format!("missing parameter `{}`", spec.name))),
            Some(p) if p.dims() != spec.shape.as_slice() => {
                return Err(Error::Params(format!(
                    "parameter `{}` has shape {:?}, expected {:?}",
                    spec.name,
                    p.dims(),
                    spec.shape
                )));
            }
            _ => {}
        }
    }
    if let Some(extra) = params.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        return Err(Error::Params(format!("unexpected parameter `{extra}`")));
    }
    Ok(())
}

/// Give every parameter a leading task dimension of size `n_tasks` (a broadcast view: all
/// tasks start from the same values).
pub fn expand(params: &ParamMap, n_tasks: usize) -> Result<ParamMap> {
    params
        .iter()
        .map(|(name, p)| {
            let mut shape = vec![n_tasks];
            shape.extend_from_slice(p.dims());
            Ok((name.clone(), p.unsqueeze(0)?.broadcast_as(shape)?))
        })
        .collect()
}

/// Serialise parameters (and any extra named tensors) to safetensors bytes.
pub fn to_safetensors(params: &ParamMap) -> Result<Vec<u8>> {
    // safetensors wants contiguous data; the map's order makes the bytes reproducible.
    let contiguous: Vec<(String, Tensor)> =
        params.iter().map(|(k, v)| Ok((k.clone(), v.contiguous()?))).collect::<Result<_>>()?;
    safetensors::serialize(contiguous.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::Params(format!("cannot serialise parameters: {e}")))
}

/// Read parameters from safetensors bytes onto `device`.
pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<ParamMap> {
    let map = candle_core::safetensors::load_buffer(bytes, device)?;
    Ok(map.into_iter().collect())
}

/// Trainable parameters for candle's autograd: one [`Var`] per name, in the same fixed order
/// as a [`ParamMap`] (candle's own `VarMap` is a hash map whose order is not stable).
#[derive(Debug, Clone)]
pub struct ParamVars {
    vars: BTreeMap<String, Var>,
}

impl ParamVars {
    /// Fresh variables holding (copies of) `params`' values, detached from any graph.
    pub fn new(params: &ParamMap) -> Result<ParamVars> {
        let vars =
            params.iter().map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.detach())?))).collect::<Result<_>>()?;
        Ok(ParamVars { vars })
    }

    /// The current values as a parameter map (tensors that track these variables in a graph).
    pub fn tensors(&self) -> ParamMap {
        self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// A snapshot of the current values, detached.
    pub fn snapshot(&self) -> ParamMap {
        self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    /// Overwrite every variable with `params`' value of the same name; the names must match
    /// (none missing, none extra) and the shapes agree.
    pub fn set(&self, params: &ParamMap) -> Result<()> {
        if let Some(extra) = params.keys().find(|k| !self.vars.contains_key(*k)) {
            return Err(Error::Params(format!("unexpected parameter `{extra}`: these variables have no such name")));
        }
        for (k, var) in &self.vars {
            let value = params.get(k).ok_or_else(|| Error::Params(format!("missing parameter `{k}`")))?;
            // A copy: candle refuses to set a variable to a tensor sharing its storage (a
            // snapshot of these very variables, say).
            var.set(&value.copy()?)?;
        }
        Ok(())
    }

    /// The variables by name, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }
}
