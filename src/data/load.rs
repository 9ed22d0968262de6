//! Reading a `Dataset` from a `--data` spec: a toy distribution, the shipped digits, a
//! folder of IDX files or of class sub-folders of images, or a `.npy` file.

use super::dataset::Dataset;
use super::{idx, image_folder, npy, toy};
use anyhow::{ensure, Context, Result};
use std::path::Path;

impl Dataset {
    /// Loads `toy:NAME` (seeded), `mnist` (the shipped digits), a folder of IDX files
    /// or of class sub-folders of images, or an unlabeled `.npy` file of shape `[n, …]`.
    pub fn load(spec: &str, seed: u64) -> Result<Self> {
        if let Some(name) = spec.strip_prefix("toy:") {
            return toy::Toy::parse(name)?.dataset(toy::DEFAULT_SIZE, seed);
        }
        let path = if spec == "mnist" {
            crate::runtime::assets::mnist_dir()
        } else {
            Path::new(spec).to_path_buf()
        };
        if path.is_dir() {
            return Self::load_image_dir(&path);
        }
        let path = path.as_path();
        let x = npy::read(path)?;
        ensure!(
            x.rank() >= 2,
            "{}: expected shape [n, …], got {:?}",
            path.display(),
            x.dims()
        );
        let n = x.dim(0)?;
        Self::new(x, vec![None; n], 0).with_context(|| format!("{}", path.display()))
    }

    fn load_image_dir(dir: &Path) -> Result<Self> {
        let (x, labels, classes) = match idx::find_pair(dir)? {
            Some((images, labels)) => {
                let x = idx::read_images(&images)?;
                let labels = idx::read_labels(&labels)?;
                ensure!(
                    labels.len() == x.dim(0)?,
                    "{}: {} images but {} labels",
                    dir.display(),
                    x.dim(0)?,
                    labels.len()
                );
                let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
                (x, labels, classes)
            }
            None => image_folder::read(dir)?,
        };
        Self::new(x, labels.into_iter().map(Some).collect(), classes).with_context(|| format!("{}", dir.display()))
    }
}
