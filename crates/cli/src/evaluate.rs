//! Evaluation shared by validation during training and `fewshot eval`: the parameters a
//! method adapts ([`eval_params`]) and accuracy over a set of episodes ([`evaluate`]).

use candle_core::{DType, Device, Tensor};
use fewshot_meta::{Accuracy, Adaptation, Engine};
use fewshot_model::{ConvNetConfig, ParamMap};
use fewshot_tasks::Episode;

use crate::config::{Config, Method};
use crate::omniglot::Omniglot;

/// Episodes evaluated per batched computation.
pub const EVAL_BATCH: usize = 32;

/// Parameters to adapt at evaluation: the meta-learned ones, or for the transfer baseline the
/// trained feature extractor with a fresh, zero `n_way` head (a random head's logits are noise
/// that the first fine-tuning steps must undo; from zero, one head-only step already gives a
/// nearest-prototype classifier, and the result does not depend on a head seed).
pub fn eval_params(config: &Config, params: &ParamMap, n_way: usize) -> anyhow::Result<ParamMap> {
    if config.train.method != Method::Transfer {
        // MAML's head as the task starts it (`train.head_init`), for `n_way` classes.
        return Ok(config.head_init().task_params(params, n_way)?);
    }
    let features = config.net(n_way).features();
    let mut out = params.clone();
    out.insert("head.weight".into(), Tensor::zeros((n_way, features), DType::F32, &Device::Cpu)?);
    out.insert("head.bias".into(), Tensor::zeros(n_way, DType::F32, &Device::Cpu)?);
    Ok(out)
}

/// Accuracy over `episodes` after adapting to each support set as `adaptation` says.
pub fn evaluate(
    engine: Engine,
    net: &ConvNetConfig,
    params: &ParamMap,
    data: &Omniglot,
    episodes: &[Episode],
    adaptation: &Adaptation,
) -> anyhow::Result<Accuracy> {
    if episodes.is_empty() {
        anyhow::bail!("no episodes to evaluate: give at least one (e.g. --n 600)");
    }
    let mut per_episode = Vec::with_capacity(episodes.len());
    for chunk in episodes.chunks(EVAL_BATCH) {
        let batch = data.batch(chunk, DType::F32, &Device::Cpu)?;
        per_episode.extend(engine.evaluate(net, params, &batch, adaptation)?);
    }
    Ok(Accuracy::from_episodes(&per_episode))
}

/// One model of an ensemble: its engine, net, parameters to adapt and adaptation.
#[derive(Debug, Clone)]
pub struct Member {
    /// What computes its adaptation.
    pub engine: Engine,
    /// Its net.
    pub net: ConvNetConfig,
    /// Its parameters as [`eval_params`] gives them.
    pub params: ParamMap,
    /// How it adapts to a support set.
    pub adaptation: Adaptation,
}

/// Accuracy of an ensemble over `episodes`: every member adapts to each support set on its
/// own, and a query's class is the arg-max of the members' mean softmax probabilities (the
/// top-models ensemble MAML++ reports on its test set). Returns the ensemble's accuracy and
/// each member's own, measured on the same episodes.
pub fn evaluate_ensemble(
    members: &[Member],
    data: &Omniglot,
    episodes: &[Episode],
) -> anyhow::Result<(Accuracy, Vec<Accuracy>)> {
    if episodes.is_empty() {
        anyhow::bail!("no episodes to evaluate: give at least one (e.g. --n 600)");
    }
    if members.is_empty() {
        anyhow::bail!("an ensemble needs at least one checkpoint");
    }
    let mut ensemble = Vec::with_capacity(episodes.len());
    let mut each = vec![Vec::with_capacity(episodes.len()); members.len()];
    for chunk in episodes.chunks(EVAL_BATCH) {
        let batch = data.batch(chunk, DType::F32, &Device::Cpu)?;
        let mut sum: Option<Tensor> = None;
        for (m, acc) in members.iter().zip(&mut each) {
            let logits = m.engine.adapted_logits(&m.net, &m.params, batch.inputs(), &m.adaptation)?;
            acc.extend(fewshot_model::accuracy(&logits, &batch.query_labels)?.to_vec1::<f32>()?);
            let logits = logits.to_dtype(DType::F64)?;
            let e = logits.broadcast_sub(&logits.max_keepdim(candle_core::D::Minus1)?)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?;
            sum = Some(match sum {
                None => p,
                Some(s) => (s + p)?,
            });
        }
        let sum = sum.expect("at least one member");
        ensemble.extend(fewshot_model::accuracy(&sum, &batch.query_labels)?.to_vec1::<f32>()?);
    }
    Ok((Accuracy::from_episodes(&ensemble), each.iter().map(|a| Accuracy::from_episodes(a)).collect()))
}
