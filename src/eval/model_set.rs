//! The networks and data a run of the paper's comparison uses: the latent autoencoder,
//! the teacher (whose weights the students start from), the feature network and the data.

use crate::data::Dataset;
use crate::models::model_dir;
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::Autoencoder;
use crate::nets::featnet::Featnet;
use crate::nets::layers::Params;
use crate::nets::network::{NetConfig, Network};
use crate::runtime::device::Runtime;
use anyhow::{bail, ensure, Result};
use std::path::Path;

/// The shipped networks and data a run uses.
pub struct Models {
    pub autoencoder: Autoencoder,
    pub teacher: Box<dyn Network>,
    /// The teacher's architecture, which the students share.
    pub teacher_net: NetConfig,
    /// The teacher's weights in f32 on the run's device: where both students start.
    pub teacher_params: Params,
    pub featnet: Featnet,
    pub data: Dataset,
    pub runtime: Runtime,
}

impl Models {
    /// `autoencoder/`, `teacher/` and `featnet/` of `dir`, frozen on `rt`.
    pub fn load(dir: &Path, data: Dataset, rt: &Runtime) -> Result<Self> {
        for part in ["autoencoder", "teacher", "featnet"] {
            let config = dir.join(part).join("config.json");
            ensure!(
                config.is_file(),
                "--models {}: no {part}/config.json (the folder holds autoencoder/, teacher/ and featnet/ as dcm train-autoencoder, train-teacher and train-featnet write them)",
                dir.display()
            );
        }
        let teacher_dir = dir.join("teacher");
        let Teacher::Network {
            net: teacher,
            config: teacher_net,
            ..
        } = Teacher::parse(&teacher_dir.to_string_lossy(), rt)?
        else {
            bail!("{}: not a network teacher folder", teacher_dir.display());
        };
        Ok(Self {
            autoencoder: model_dir::load_autoencoder(&dir.join("autoencoder"), rt)?,
            teacher,
            teacher_net,
            teacher_params: rt.trainable(&model_dir::load_params(&teacher_dir)?)?,
            featnet: model_dir::load_featnet(&dir.join("featnet"), rt)?,
            data,
            runtime: rt.clone(),
        })
    }
}
