//! Evaluation shared by validation during training and `fewshot eval`: accuracy over a set of
//! episodes, of one model ([`evaluate`]) or an ensemble ([`evaluate_ensemble`]).

use candle_core::{DType, Device, Tensor};
use fewshot_meta::{Accuracy, Adaptation, Engine, MetaParams, TaskBatch};
use fewshot_model::ConvNetConfig;
use fewshot_tasks::Episode;

use crate::data::Data;

/// Episodes evaluated per batched computation.
pub const EVAL_BATCH: usize = 32;

/// Episodes whose accuracies a [`Tally`] holds one by one before it keeps counts instead.
const HELD: usize = 1 << 20;

/// Per-episode accuracies summarised as they come: held one by one up to [`HELD`] episodes (so
/// that the figures are exactly [`Accuracy::from_episodes`]'), then as a count of each value
/// (an episode's accuracy is one of a few fractions), so that memory stays bounded however
/// many episodes are evaluated.
#[derive(Debug, Default, Clone)]
struct Tally {
    held: Vec<f32>,
    /// Episodes per accuracy value (its bits), once past [`HELD`].
    counts: std::collections::BTreeMap<u32, u64>,
}

impl Tally {
    fn add(&mut self, accuracies: &[f32]) {
        if self.counts.is_empty() && self.held.len() + accuracies.len() <= HELD {
            self.held.extend_from_slice(accuracies);
            return;
        }
        for v in std::mem::take(&mut self.held).iter().chain(accuracies) {
            *self.counts.entry(v.to_bits()).or_default() += 1;
        }
    }

    fn finish(&self) -> Accuracy {
        if self.counts.is_empty() {
            return Accuracy::from_episodes(&self.held);
        }
        let values = || self.counts.iter().map(|(&bits, &c)| (f32::from_bits(bits) as f64, c as f64));
        let n: f64 = values().map(|(_, c)| c).sum();
        let mean = values().map(|(v, c)| v * c).sum::<f64>() / n;
        let var = if n > 1.0 { values().map(|(v, c)| c * (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Accuracy { mean, ci95: 1.96 * (var / n).sqrt(), episodes: n as usize }
    }
}

/// Render `episodes` [`EVAL_BATCH`] at a time and hand each batch to `f`, so an iterator that
/// draws them is never held whole; an error when there were none.
fn for_each_batch(
    data: &Data,
    episodes: impl IntoIterator<Item = Episode>,
    mut f: impl FnMut(&TaskBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut episodes = episodes.into_iter();
    let mut any = false;
    loop {
        let chunk: Vec<Episode> = episodes.by_ref().take(EVAL_BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        any = true;
        f(&data.batch(&chunk, DType::F32, &Device::Cpu)?)?;
    }
    if !any {
        anyhow::bail!("no episodes to evaluate: give at least one (e.g. --n 600)");
    }
    Ok(())
}

/// Accuracy over `episodes` after adapting to each support set as `adaptation` says. The
/// episodes are read a batch at a time: an iterator that draws them is never held whole.
pub fn evaluate(
    engine: Engine,
    net: &ConvNetConfig,
    params: &MetaParams,
    data: &Data,
    episodes: impl IntoIterator<Item = Episode>,
    adaptation: &Adaptation,
) -> anyhow::Result<Accuracy> {
    let mut tally = Tally::default();
    for_each_batch(data, episodes, |batch| {
        tally.add(&engine.evaluate(net, params, batch, adaptation)?);
        Ok(())
    })?;
    Ok(tally.finish())
}

/// One model of an ensemble: its engine, net, parameters to adapt and adaptation.
#[derive(Debug, Clone)]
pub struct Member {
    /// What computes its adaptation.
    pub engine: Engine,
    /// Its net.
    pub net: ConvNetConfig,
    /// Its parameters as a task starts them ([`crate::settings::Evaluation::params`]).
    pub params: MetaParams,
    /// How it adapts to a support set.
    pub adaptation: Adaptation,
}

/// Accuracy of an ensemble over `episodes`: every member adapts to each support set on its
/// own, and a query's class is the arg-max of the members' mean softmax probabilities (the
/// top-models ensemble MAML++ reports on its test set). Returns the ensemble's accuracy and
/// each member's own, measured on the same episodes.
pub fn evaluate_ensemble(
    members: &[Member],
    data: &Data,
    episodes: impl IntoIterator<Item = Episode>,
) -> anyhow::Result<(Accuracy, Vec<Accuracy>)> {
    if members.is_empty() {
        anyhow::bail!("an ensemble needs at least one checkpoint");
    }
    let mut ensemble = Tally::default();
    let mut each = vec![Tally::default(); members.len()];
    for_each_batch(data, episodes, |batch| {
        let mut sum: Option<Tensor> = None;
        for (m, acc) in members.iter().zip(&mut each) {
            let logits = m.engine.adapted_logits(&m.net, &m.params, batch.inputs(), &m.adaptation)?;
            acc.add(&fewshot_model::accuracy(&logits, &batch.query_labels)?.to_vec1::<f32>()?);
            let logits = logits.to_dtype(DType::F64)?;
            let e = logits.broadcast_sub(&logits.max_keepdim(candle_core::D::Minus1)?)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?;
            sum = Some(match sum {
                None => p,
                Some(s) => (s + p)?,
            });
        }
        let sum = sum.expect("at least one member");
        ensemble.add(&fewshot_model::accuracy(&sum, &batch.query_labels)?.to_vec1::<f32>()?);
        Ok(())
    })?;
    Ok((ensemble.finish(), each.iter().map(Tally::finish).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_past_its_held_episodes_gives_the_same_figures() {
        // Accuracies of 5-way 1-query episodes: 0, 0.2, ..., 1, in a fixed pseudo-random mix.
        let values: Vec<f32> = (0..HELD + 12_345).map(|i| ((i * 7919 + 13) % 6) as f32 / 5.0).collect();
        let mut tally = Tally::default();
        for chunk in values.chunks(EVAL_BATCH) {
            tally.add(chunk);
        }
        assert!(!tally.counts.is_empty() && tally.held.is_empty(), "counts, not values, past HELD");
        let (got, want) = (tally.finish(), Accuracy::from_episodes(&values));
        assert_eq!(got.episodes, want.episodes);
        assert!((got.mean - want.mean).abs() < 1e-12 && (got.ci95 - want.ci95).abs() < 1e-12, "{got:?} {want:?}");
        // Below HELD: exactly the per-episode figures.
        let mut small = Tally::default();
        small.add(&values[..600]);
        assert_eq!(small.finish(), Accuracy::from_episodes(&values[..600]));
    }
}
