//! Finite-difference helpers the f64 gradient tests share.

use candle_core::{Device, Tensor};
use fewshot_model::ParamMap;

/// `params` with coordinate `index` of parameter `name` moved by `delta`.
pub fn perturbed(params: &ParamMap, name: &str, index: usize, delta: f64) -> ParamMap {
    let mut out = params.clone();
    let p = &params[name];
    let mut v = p.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[index] += delta;
    out.insert(name.to_owned(), Tensor::from_vec(v, p.dims(), &Device::Cpu).unwrap());
    out
}

/// Largest absolute difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// The central difference of `loss` along coordinate `index` of parameter `name` (step 1e-6),
/// or `None` where steps of 1e-5 and 1e-6 disagree: a ReLU or max-pool kink is near.
pub fn central_difference(loss: impl Fn(&ParamMap) -> f64, params: &ParamMap, name: &str, index: usize) -> Option<f64> {
    let fd =
        |h: f64| (loss(&perturbed(params, name, index, h)) - loss(&perturbed(params, name, index, -h))) / (2.0 * h);
    let (a, b) = (fd(1e-5), fd(1e-6));
    let scale = a.abs().max(b.abs()).max(1e-7);
    ((a - b).abs() <= 1e-5 * scale).then_some(b)
}
