//! `fewshot predict`: label the query images of folder tasks, as CSV.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Device;

use super::{check_n_way, refuse_to_overwrite_inputs};
use crate::checkpoint::Checkpoint;

/// `fewshot predict`'s arguments.
#[derive(Debug, Clone)]
pub struct PredictArgs {
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// The folder of tasks (`support/NNNN/image_C.png`, `query/NNNN/image_J.png`).
    pub tasks: PathBuf,
    /// Inner steps on each support set (default: the config's).
    pub inner_steps: Option<usize>,
    /// One probability column per class.
    pub probabilities: bool,
    /// Where the CSV goes (`-`: standard output).
    pub out: PathBuf,
}

/// Run `fewshot predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let PredictArgs { checkpoint, tasks, inner_steps, probabilities, out } = args;
    refuse_to_overwrite_inputs(&out, &[(&checkpoint, "the checkpoint it reads")], Some(&tasks))?;
    let ckpt = Checkpoint::load(&checkpoint, &Device::Cpu)?;
    let settings = ckpt.settings(&checkpoint)?;
    let folder_tasks = crate::predict::read_tasks(&tasks, &crate::predict::Reading::of(&settings))?;
    let n_way = folder_tasks[0].n_way();
    let names = &folder_tasks[0].class_names;
    check_n_way(&settings, n_way, &checkpoint, &format!("{} holds", tasks.display()))?;
    let e = &settings.evaluation;
    let params = e.params(&settings.net, &ckpt.params, n_way)?;
    let adaptation = e.adaptation(inner_steps.unwrap_or(e.adaptation.steps));
    let rows = crate::predict::predict(&settings.net.net(n_way), &params, &folder_tasks, &adaptation)?;
    // Photos: `file,class` with the class folder's name (probability columns `p_<name>`);
    // the course layout: `id,class` with class numbers (`p<C>`).
    let field = crate::predict::csv_field;
    let mut csv = String::from(if names.is_empty() { "id,class" } else { "file,class" });
    if probabilities {
        for c in 0..n_way {
            csv += &if names.is_empty() { format!(",p{c}") } else { format!(",{}", field(&format!("p_{}", names[c]))) };
        }
    }
    csv += "\n";
    for row in &rows {
        let class = if names.is_empty() { row.class.to_string() } else { field(&names[row.class as usize]) };
        csv += &format!("{},{class}", field(&row.id));
        if probabilities {
            row.probabilities.iter().for_each(|p| csv += &format!(",{p:.6}"));
        }
        csv += "\n";
    }
    crate::predict::write_output(&out, csv.as_bytes())?;
    if crate::ranks::is_writer() {
        eprintln!("wrote {} predictions for {} tasks to {}", rows.len(), folder_tasks.len(), out.display());
    }
    Ok(ExitCode::SUCCESS)
}
