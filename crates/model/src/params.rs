//! The ordered parameter map, its PyTorch-style initialisation and safetensors bytes.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::net::ConvNetConfig;

/// Parameters by name, in a fixed (sorted) order so iteration, saving and gradients come out
/// the same every run.
pub type ParamMap = BTreeMap<String, Tensor>;

/// Name of block `i`'s parameter `what` (`conv.weight`, `conv.bias`, `bn.weight`, `bn.bias`).
pub fn block_param(i: usize, what: &str) -> String {
    format!("block{i}.{what}")
}

/// Initialise the net's parameters from `seed` the way PyTorch's defaults do:
/// `Conv2d` and `Linear` weights and biases uniform in `±1/sqrt(fan_in)` (kaiming uniform
/// with a = sqrt(5)), `BatchNorm2d` scale 1 and shift 0.
///
/// # Shapes
/// `block{i}.conv.weight`: `[hidden, c_in, 3, 3]`; `block{i}.conv.bias`, `block{i}.bn.weight`,
/// `block{i}.bn.bias`: `[hidden]`; `head.weight`: `[n_way, features]`; `head.bias`: `[n_way]`.
pub fn init(config: &ConvNetConfig, seed: u64, dtype: DType, device: &Device) -> Result<ParamMap> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |shape: &[usize], bound: f64| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    };
    let mut params = ParamMap::new();
    let mut c_in = config.in_channels;
    for i in 0..config.depth {
        let h = config.hidden;
        let bound = 1.0 / ((c_in * 9) as f64).sqrt();
        params.insert(block_param(i, "conv.weight"), uniform(&[h, c_in, 3, 3], bound)?);
        params.insert(block_param(i, "conv.bias"), uniform(&[h], bound)?);
        params.insert(block_param(i, "bn.weight"), Tensor::ones(h, dtype, device)?);
        params.insert(block_param(i, "bn.bias"), Tensor::zeros(h, dtype, device)?);
        c_in = h;
    }
    let features = config.features();
    let bound = 1.0 / (features as f64).sqrt();
    params.insert("head.weight".to_owned(), uniform(&[config.n_way, features], bound)?);
    params.insert("head.bias".to_owned(), uniform(&[config.n_way], bound)?);
    Ok(params)
}

/// Check that `params` has exactly the names and shapes `config` needs (without a task
/// dimension); the error names the first parameter that differs.
pub fn check_params(config: &ConvNetConfig, params: &ParamMap) -> Result<()> {
    let want = init(config, 0, DType::F32, &Device::Cpu)?;
    for (name, w) in &want {
        match params.get(name) {
            None => return Err(Error::Params(format!("missing parameter `{name}`"))),
            Some(p) if p.dims() != w.dims() => {
                return Err(Error::Params(format!(
                    "parameter `{name}` has shape {:?}, expected {:?}",
                    p.dims(),
                    w.dims()
                )));
            }
            _ => {}
        }
    }
    if let Some(extra) = params.keys().find(|k| !want.contains_key(*k)) {
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
