//! [`MetaParams`]: what a meta-learner learns, as one typed group: the net's parameters and,
//! beside them, MAML++'s learned inner rates ([`crate::rates`]) and per-step batch-norm sets
//! ([`crate::bn_steps`]). Engines, learners and Adam take the groups as they are; names with
//! prefixes (`inner_lr.<parameter>`, `bn_step.<parameter>`) exist only in the flat map that
//! checkpoints store ([`MetaParams::to_map`], [`MetaParams::from_map`]), as they always have.

use fewshot_model::{ConvNetConfig, ParamMap};

use crate::bn_steps::{BN_STEP_PREFIX, BnStepTable};
use crate::error::{Error, Result};
use crate::rates::{RATE_PREFIX, RateTable};

/// A meta-learner's parameters, by group.
#[derive(Debug, Clone, Default)]
pub struct MetaParams {
    /// The net's parameters (the names of [`fewshot_model::param_specs`]).
    pub net: ParamMap,
    /// Learned inner rates, by net parameter name, each `[steps]` (see [`crate::init_rates`]).
    pub rates: Option<ParamMap>,
    /// Per-step batch-norm gains and shifts, by batch-norm parameter name, each `[steps,
    /// hidden]` (see [`crate::init_bn_steps`]).
    pub bn_steps: Option<ParamMap>,
}

impl From<ParamMap> for MetaParams {
    /// The net's parameters alone.
    fn from(net: ParamMap) -> MetaParams {
        MetaParams { net, rates: None, bn_steps: None }
    }
}

/// The groups and their names in the flat map.
const GROUPS: [(Group, &str); 2] = [(Group::Rates, RATE_PREFIX), (Group::BnSteps, BN_STEP_PREFIX)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Rates,
    BnSteps,
}

impl MetaParams {
    /// The groups from a flat map as checkpoints store it (`inner_lr.*` and `bn_step.*`
    /// entries beside the net's), checked against `config` (see [`MetaParams::check`]).
    pub fn from_map(config: &ConvNetConfig, flat: &ParamMap) -> Result<MetaParams> {
        let out = MetaParams::split(flat);
        out.check(config)?;
        Ok(out)
    }

    /// [`MetaParams::from_map`] without the checks (for a map whose head is still to be
    /// replaced, say).
    pub fn split(flat: &ParamMap) -> MetaParams {
        let mut out = MetaParams::default();
        for (name, t) in flat {
            let group = GROUPS.iter().find_map(|(g, prefix)| Some((*g, name.strip_prefix(prefix)?)));
            let map = match group {
                None => &mut out.net,
                Some((Group::Rates, _)) => out.rates.get_or_insert_with(ParamMap::new),
                Some((Group::BnSteps, _)) => out.bn_steps.get_or_insert_with(ParamMap::new),
            };
            map.insert(group.map_or(name.as_str(), |(_, rest)| rest).to_owned(), t.clone());
        }
        out
    }

    /// The flat map checkpoints store: the net's names, `inner_lr.<parameter>` and
    /// `bn_step.<parameter>`.
    pub fn to_map(&self) -> ParamMap {
        let mut out = self.net.clone();
        for (group, prefix) in GROUPS {
            for (name, t) in self.group(group).into_iter().flatten() {
                out.insert(format!("{prefix}{name}"), t.clone());
            }
        }
        out
    }

    /// Check the groups: exactly the net's parameters (see [`fewshot_model::check_params`]),
    /// and, where present, one `[k]` rate per net parameter (the same `k >= 1` for all) and
    /// one `[k, hidden]` set per batch-norm parameter.
    pub fn check(&self, config: &ConvNetConfig) -> Result<()> {
        fewshot_model::check_params(config, &self.net)?;
        if let Some(rates) = &self.rates {
            RateTable::from_map(config, rates)?;
        }
        if let Some(sets) = &self.bn_steps {
            BnStepTable::from_map(config, sets)?;
        }
        Ok(())
    }

    /// The same groups with other values: `f` maps each group's map (net, rates, sets).
    pub fn map(&self, mut f: impl FnMut(&ParamMap) -> Result<ParamMap>) -> Result<MetaParams> {
        Ok(MetaParams {
            net: f(&self.net)?,
            rates: self.rates.as_ref().map(&mut f).transpose()?,
            bn_steps: self.bn_steps.as_ref().map(&mut f).transpose()?,
        })
    }

    fn group(&self, group: Group) -> Option<&ParamMap> {
        match group {
            Group::Rates => self.rates.as_ref(),
            Group::BnSteps => self.bn_steps.as_ref(),
        }
    }

    /// An error unless the groups hold no per-step batch-norm sets (for the candle engine).
    pub(crate) fn refuse_bn_steps(&self) -> Result<()> {
        if self.bn_steps.is_some() {
            return Err(Error::InvalidSetting {
                name: "bn_step",
                value: "per-step batch-norm sets".into(),
                expected: "none for the candle engine (per-step batch norm is the native engine's)".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// One group's names and shapes.
    type Shapes = Option<Vec<(String, Vec<usize>)>>;

    /// The groups' names and shapes.
    fn shapes(p: &MetaParams) -> [Shapes; 3] {
        let of = |m: Option<&ParamMap>| m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect());
        [of(Some(&p.net)), of(p.rates.as_ref()), of(p.bn_steps.as_ref())]
    }

    /// Checkpoints written before the groups existed keep loading: the flat names are those
    /// of then (`inner_lr.<parameter>`, `bn_step.<parameter>`), both ways.
    #[test]
    fn the_flat_names_are_those_checkpoints_have_always_stored() {
        let c = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 2 };
        let net = fewshot_model::init(&c, 0, DType::F32, &Device::Cpu).unwrap();
        let params = MetaParams {
            rates: Some(crate::init_rates(&c, 2, 0.4, DType::F32, &Device::Cpu).unwrap()),
            bn_steps: Some(crate::init_bn_steps(&c, &net, 2).unwrap()),
            net,
        };
        let flat = params.to_map();
        let names: Vec<&str> = flat.keys().map(String::as_str).collect();
        for name in
            ["block0.conv.weight", "inner_lr.block0.conv.weight", "inner_lr.head.bias", "bn_step.block1.bn.bias"]
        {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert_eq!(flat.len(), 2 * 10 + 4, "10 net parameters, 10 rates, 4 batch-norm sets");
        let back = MetaParams::from_map(&c, &flat).unwrap();
        assert_eq!(shapes(&back), shapes(&params));
        assert_eq!(back.to_map().keys().collect::<Vec<_>>(), flat.keys().collect::<Vec<_>>());
        // A net-only map is a net-only group.
        let plain = MetaParams::from_map(&c, &params.net).unwrap();
        assert!(plain.rates.is_none() && plain.bn_steps.is_none());
        // A stray rate is refused by name.
        let mut bad = flat.clone();
        bad.insert("inner_lr.nothing".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
        let e = MetaParams::from_map(&c, &bad).unwrap_err().to_string();
        assert!(e.contains("nothing"), "{e}");
    }
}
