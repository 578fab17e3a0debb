//! Run configuration as written: the schema of the TOML files under `configs/` (serde types,
//! defaults, field docs), read with `--set key=value` overrides (`overrides`). What the values
//! mean, and whether they are in range, is decided once, when [`crate::settings::Settings`]
//! resolves a config.

mod overrides;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A whole run's settings, as written in a config file (every section optional but `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name; outputs go to `runs/<name>` unless `--out` says otherwise.
    pub name: String,
    /// The one seed: class split, episodes, augmentation and initialisation derive from it.
    #[serde(default)]
    pub seed: u64,
    /// Dataset location and image size.
    #[serde(default)]
    pub data: DataConfig,
    /// Episode shape and class pools.
    #[serde(default)]
    pub episodes: EpisodesConfig,
    /// Net shape.
    #[serde(default)]
    pub model: ModelConfig,
    /// Training method and schedule.
    #[serde(default)]
    pub train: TrainConfig,
    /// Task augmentation.
    #[serde(default)]
    pub augment: AugmentConfig,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where archives and caches live (default `data/omniglot`, or `OMNIGLOT_DATA_DIR`).
    pub dir: Option<PathBuf>,
    /// Where to fetch missing archives from (default: `OMNIGLOT_SOURCE`, else the canonical URL).
    pub source: Option<String>,
    /// Side of the square images.
    pub image_size: u32,
    /// `omniglot` (the real counts are checked) or `any` (for small generated data sets).
    pub expect: ExpectCounts,
    /// A folder of your own labelled images instead of Omniglot: one folder of images (PNG,
    /// JPEG) per class, possibly grouped in folders, with the splits in `train/`, `val/`,
    /// `test/` folders or cut by `split`. Decoded images are cached in `dir` (default
    /// `data/folders`).
    pub folder: Option<PathBuf>,
    /// How stored values become inputs: `ink` (`1 - v/255`: dark marks on a light page, as
    /// Omniglot) or `plain` (`v/255`: photographs). Default: `ink` for Omniglot, `plain` for a
    /// folder.
    pub intensity: Option<fewshot_tasks::Intensity>,
    /// With `folder` and no split folders: the fractions of its classes that train, validate
    /// and test (seeded by `seed`).
    pub split: SplitConfig,
    /// With `folder`: leave out, with a count, classes with fewer images than an episode takes
    /// from a class (`k_shot + n_query`); otherwise they are an error that names them.
    pub skip_small_classes: bool,
    /// With `folder`: normalise each input channel, `(v - mean) / std`, by the mean and
    /// standard deviation of the training classes' images, measured when training starts and
    /// written here as `mean` and `std` (in the run's `config.toml` and in every checkpoint, so
    /// `eval` and `predict` apply the same numbers).
    pub normalize: bool,
    /// Per-channel means for `normalize` (measured when absent).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations for `normalize` (measured when absent).
    pub std: Option<Vec<f32>>,
}

/// `[data] split`: fractions of a folder's classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Meta-training.
    pub train: f64,
    /// Validation.
    pub val: f64,
    /// Test.
    pub test: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig { train: 0.7, val: 0.15, test: 0.15 }
    }
}

/// Which dataset counts to insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectCounts {
    /// 964 + 659 characters.
    Omniglot,
    /// Any complete structure.
    Any,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: None,
            source: None,
            image_size: 28,
            expect: ExpectCounts::Omniglot,
            folder: None,
            intensity: None,
            split: SplitConfig::default(),
            skip_small_classes: false,
            normalize: false,
            mean: None,
            std: None,
        }
    }
}

/// `[episodes]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodesConfig {
    /// `course` or `paper`.
    pub protocol: fewshot_tasks::Protocol,
    /// Classes per episode (of validation and test episodes, and of meta-training tasks
    /// unless `train_n_way` is set).
    pub n_way: usize,
    /// Classes per meta-training task only (default: `n_way`): a model whose head adapts to any
    /// number of classes (`train.head_init = "zero"` or `"shared"`) can train on small tasks
    /// and be validated and tested on `n_way`-way ones.
    pub train_n_way: Option<usize>,
    /// Support images per class.
    pub k_shot: usize,
    /// Query images per class in validation and test episodes (and in meta-training unless
    /// `train_n_query` is set).
    pub n_query: usize,
    /// Query images per class in meta-training tasks only (default: `n_query`). A training
    /// recipe choice: the evaluation protocol keeps `n_query`.
    pub train_n_query: Option<usize>,
    /// `any` or `first_ten_support`.
    pub drawing_split: fewshot_tasks::DrawingSplit,
    /// Meta-train on only the first this many classes of the (seeded, shuffled) meta-train
    /// pool; all of them when absent (the course code's `task_num`).
    pub train_classes: Option<usize>,
}

impl Default for EpisodesConfig {
    fn default() -> Self {
        EpisodesConfig {
            protocol: fewshot_tasks::Protocol::Course,
            n_way: 5,
            train_n_way: None,
            k_shot: 1,
            n_query: 1,
            train_n_query: None,
            drawing_split: fewshot_tasks::DrawingSplit::Any,
            train_classes: None,
        }
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Channels per conv block.
    pub hidden: usize,
    /// Number of conv blocks.
    pub depth: usize,
    /// Input channels: 1 (gray) or 3 (colour, with `data.folder`).
    pub channels: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { hidden: 64, depth: 4, channels: 1 }
    }
}

/// Training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// MAML, exact second order.
    Maml,
    /// First-order MAML.
    Fomaml,
    /// Transfer-learning baseline ("A Closer Look at Few-shot Classification"): one classifier
    /// over all meta-train classes; at evaluation a fresh, zero N-way head replaces its head and
    /// is fine-tuned on each task's support set (see `train.finetune`).
    Transfer,
    /// The course's baseline: one N-way classifier trained on the support sets of meta-train
    /// tasks (labels local to each task, no inner loop), then fine-tuned as a whole on each
    /// test task's support set.
    TaskClassifier,
    /// Prototypical networks (Snell et al. 2017): each query is labelled by its squared
    /// Euclidean distance to the mean embedding of each class's support images; no inner loop
    /// (`train.inner_steps = 0`). Trained by the engine's forward and backward passes as MAML
    /// with the prototype head (`train.head_init = "prototypes"`) and no inner step; evaluates
    /// on any number of classes.
    Protonet,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `maml`, `fomaml`, `transfer` or `task_classifier`.
    pub method: Method,
    /// Meta-steps (or, for `transfer`, classifier steps).
    pub steps: usize,
    /// Tasks per meta-step (for `transfer`: images per step = meta_batch_size x n_way x (k_shot + n_query)).
    pub meta_batch_size: usize,
    /// Outer (Adam) learning rate.
    pub meta_lr: f64,
    /// Inner SGD step size (also used to fine-tune at evaluation).
    pub inner_lr: f64,
    /// Inner steps during training.
    pub inner_steps: usize,
    /// Inner steps at validation and evaluation.
    pub eval_inner_steps: usize,
    /// What adaptation at validation and evaluation updates: `all` or `head`.
    pub finetune: fewshot_meta::Scope,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Also validate at about this many log-spaced steps (1, 2, 3, 5, ...; for learning
    /// curves on a log axis); 0: none.
    pub val_log_points: usize,
    /// Episodes in the fixed validation set.
    pub val_episodes: usize,
    /// Write the `last` checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Also keep the checkpoints of the this-many best validations under
    /// `checkpoints/top/` (`step-<N>.safetensors`), for an ensemble at test time as MAML++
    /// evaluates (`fewshot eval --checkpoint <run>/checkpoints/top`); 0: only `best`. An
    /// output option: changing it on `--resume` is allowed.
    pub keep_best: usize,
    /// MAML++ multi-step loss: the query loss after every inner step enters the meta-objective,
    /// its weights annealed from uniform toward the last step over
    /// `multi_step_loss_steps` meta-steps (MAML and first-order MAML only).
    pub multi_step_loss: bool,
    /// Meta-steps over which the multi-step loss anneals.
    pub multi_step_loss_steps: usize,
    /// MAML++ derivative-order annealing: the first this many meta-steps of `maml` are first
    /// order; 0: off.
    pub first_order_steps: usize,
    /// MAML++ learned per-layer, per-step inner learning rates (LSLR): one step size per
    /// parameter tensor and inner step, starting at `inner_lr` and meta-learned with the net
    /// (kept in checkpoints as `inner_lr.<parameter>`). Evaluation with more inner steps than
    /// `inner_steps` repeats the last learned rate.
    pub learned_inner_lr: bool,
    /// MAML++ per-step batch-norm weights and biases: a gain and shift per inner step,
    /// meta-learned and not adapted in the inner loop (kept as `bn_step.<parameter>`,
    /// `[inner_steps, hidden]`; they replace the net's own batch-norm parameters). Native
    /// engine only.
    pub per_step_bn: bool,
    /// The outer learning rate over training: `constant` or `cosine` (annealed from `meta_lr`
    /// at step 0 to `meta_lr_min` at step `meta_lr_cosine_steps`, then constant).
    pub meta_lr_schedule: LrScheduleKind,
    /// Where the cosine schedule ends.
    pub meta_lr_min: f64,
    /// The cosine schedule's length in meta-steps (its own key, not `steps`, so that
    /// extending a run with `--resume` does not change the schedule it trained under).
    pub meta_lr_cosine_steps: usize,
    /// How the head starts each task (MAML and first-order MAML): `learned` (MAML's), `zero`
    /// (zeroed before every inner loop), `shared` (one learned row copied to every class) or
    /// `prototypes` (Proto-MAML: class `k`'s row `2 c_k` and bias `-|c_k|^2`, `c_k` the mean
    /// features of its support images; the meta-gradient goes through them). With any but
    /// `learned` the model is invariant to the order of labels and evaluates on any number of
    /// classes (`fewshot eval --n-way`, `predict`).
    pub head_init: fewshot_meta::HeadInit,
    /// What computes gradients: `native` (the hand-written engine) or `candle` (the reference
    /// path through candle's autograd; slower, for checking).
    pub engine: EngineKind,
    /// Tasks per batched computation of the `candle` engine (its memory bound for second
    /// order); the native engine runs one task at a time and does not read it.
    pub task_chunk: usize,
}

/// `train.meta_lr_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduleKind {
    /// `meta_lr` throughout.
    #[default]
    Constant,
    /// Cosine annealing to `meta_lr_min`.
    Cosine,
}

/// `train.engine` (the settings map it to [`fewshot_meta::Engine`], which also holds
/// `task_chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The native engine (`fewshot_model::engine`).
    #[default]
    Native,
    /// candle's autograd.
    Candle,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: Method::Maml,
            steps: 3000,
            meta_batch_size: 32,
            meta_lr: 0.001,
            inner_lr: 0.4,
            inner_steps: 1,
            eval_inner_steps: 3,
            finetune: fewshot_meta::Scope::All,
            log_every: 10,
            val_every: 100,
            val_log_points: 0,
            val_episodes: 200,
            checkpoint_every: 100,
            keep_best: 0,
            multi_step_loss: false,
            multi_step_loss_steps: 1000,
            first_order_steps: 0,
            learned_inner_lr: false,
            per_step_bn: false,
            meta_lr_schedule: LrScheduleKind::Constant,
            meta_lr_min: 0.0,
            meta_lr_cosine_steps: 0,
            head_init: fewshot_meta::HeadInit::Learned,
            engine: EngineKind::Native,
            task_chunk: fewshot_meta::DEFAULT_TASK_CHUNK,
        }
    }
}

/// Whole-task rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskRotationKind {
    /// None.
    None,
    /// 90 or 270 degrees.
    Quarter,
    /// Uniform angle in [-90, 90] degrees.
    Angle,
}

/// `[augment]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Rotate each sampled class by a random multiple of 90 degrees.
    pub class_rotation: bool,
    /// `none`, `quarter` or `angle`.
    pub task_rotation: TaskRotationKind,
    /// Probability of rotating a task.
    pub task_rotation_p: f64,
    /// Photos (with `data.folder`): pad each training image with this many zero pixels a side
    /// and crop it back at a random offset (torchvision's `RandomCrop(size, padding)`); 0: off.
    pub crop_padding: usize,
    /// Photos: mirror each training image left to right with probability one half.
    pub flip: bool,
    /// Photos: scale each training image's brightness, contrast and saturation by factors
    /// drawn from `[1 - j, 1 + j]` (torchvision's `ColorJitter(j, j, j)`); 0: off.
    pub color_jitter: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            class_rotation: false,
            task_rotation: TaskRotationKind::None,
            task_rotation_p: 0.0,
            crop_padding: 0,
            flip: false,
            color_jitter: 0.0,
        }
    }
}

/// The longest run name: one folder name on every common file system (255 bytes) with room
/// for `.old-N` when a run is moved aside.
impl Config {
    /// The keys whose values differ between `self` and `other`, as `key: self -> other`.
    pub fn differences(&self, other: &Config) -> Vec<String> {
        fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        flatten(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_owned(), other.to_string());
                }
            }
        }
        let table = |c: &Config| {
            let mut out = std::collections::BTreeMap::new();
            flatten("", &toml::Value::try_from(c).expect("configs serialise"), &mut out);
            out
        };
        let (a, b) = (table(self), table(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let none = "(unset)".to_owned();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} -> {}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none)))
            .collect()
    }

    /// The config as TOML (written beside every run and inside every checkpoint).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_value_merges_into_its_section() {
        let text = "name = \"x\"\n[augment]\ntask_rotation = \"angle\"\ntask_rotation_p = 0.6\n";
        let sets = ["augment={class_rotation=true}".to_owned()];
        let merged = Config::parse(text, "test.toml", &sets).unwrap();
        let dotted = Config::parse(text, "test.toml", &["augment.class_rotation=true".to_owned()]).unwrap();
        assert_eq!(merged, dotted);
        assert!(merged.augment.class_rotation);
        assert_eq!(merged.augment.task_rotation_p, 0.6);
        // A table after dotted keys keeps them.
        let sets = ["train.steps=7".to_owned(), "train={meta_batch_size=3}".to_owned()];
        let c = Config::parse("name = \"x\"\n", "test.toml", &sets).unwrap();
        assert_eq!((c.train.steps, c.train.meta_batch_size), (7, 3));
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("name = \"x\"", "t", &["train.steps=7".into(), "episodes.n_way=20".into()]).unwrap();
        assert_eq!((c.train.steps, c.episodes.n_way, c.train.inner_lr), (7, 20, 0.4));
        let again = Config::parse(&c.to_toml(), "round trip", &[]).unwrap();
        assert_eq!(again, c);
    }
}
