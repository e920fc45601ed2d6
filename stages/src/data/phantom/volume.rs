//! Phantom CT volumes: one patient per volume, slices stacked from the lung base to the apex, with
//! lesions that are blobs in 3-D, so a patch of ground glass runs on through neighbouring slices
//! as it does in a scan. The geometry (pixel and slice spacing, the voxel-to-world affine) is
//! known exactly, which is what the volume readers, writers and the report are tested against.

use super::*;

use crate::volume::Affine;

const MIN_SLICES: usize = 4;
const MAX_SLICES_PER_VOLUME: usize = 1000;
const MAX_VOLUMES: usize = 1000;
const MAX_FIRST: usize = 999_000;
/// Keeps one volume's painted slices (about 30 bytes a pixel) within a few GB.
const MAX_VOXELS: usize = 512 * 512 * 400;
/// Salt of the per-volume streams, so volume `i` and slice phantom `i` of one seed differ.
const VOLUME_SALT: u64 = 0x766f_6c75_6d65_0001;

/// How phantom volumes are made; `[params]` of the `synth-volumes` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumePhantomConfig {
    /// Number of volumes (patients).
    pub volumes: usize,
    /// Axial slices per volume.
    pub slices: usize,
    /// Width and height of a slice in pixels.
    pub size: usize,
    /// Width of the square field of view in mm; the pixel spacing is `field_of_view_mm / size`.
    pub field_of_view_mm: f64,
    /// Distance between slice centres in mm (also the slice thickness).
    pub slice_mm: f64,
    /// Share of volumes drawn without any lesion.
    pub lesion_free_fraction: f64,
    /// Standard deviation of the additive Gaussian noise, in HU.
    pub noise_hu: f64,
    /// Index of the first volume: `first = 100` makes `phantom-100`, `phantom-101`, …, other
    /// patients than a set of the same seed starting at 0 (held-out scans to predict).
    #[serde(skip_serializing_if = "is_zero")]
    pub first: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Default for VolumePhantomConfig {
    fn default() -> Self {
        Self {
            volumes: 2,
            slices: 32,
            size: 128,
            field_of_view_mm: 350.0,
            slice_mm: 5.0,
            lesion_free_fraction: 0.0,
            noise_hu: 20.0,
            first: 0,
        }
    }
}

impl VolumePhantomConfig {
    /// Rejects values the generator cannot honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let range = |field: &'static str, ok: bool, expected: &str, got: String| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid_param(
                    field,
                    format!("expected {expected}, got {got}"),
                ))
            }
        };
        range(
            "volumes",
            (1..=MAX_VOLUMES).contains(&self.volumes),
            &format!("1…{MAX_VOLUMES}"),
            self.volumes.to_string(),
        )?;
        range(
            "slices",
            (MIN_SLICES..=MAX_SLICES_PER_VOLUME).contains(&self.slices),
            &format!("{MIN_SLICES}…{MAX_SLICES_PER_VOLUME}"),
            self.slices.to_string(),
        )?;
        range(
            "size",
            (MIN_SIZE..=MAX_SIZE).contains(&self.size),
            &format!("{MIN_SIZE}…{MAX_SIZE}"),
            self.size.to_string(),
        )?;
        range(
            "field_of_view_mm",
            (100.0..=600.0).contains(&self.field_of_view_mm),
            "100…600 mm",
            self.field_of_view_mm.to_string(),
        )?;
        range(
            "slice_mm",
            (0.5..=20.0).contains(&self.slice_mm),
            "0.5…20 mm",
            self.slice_mm.to_string(),
        )?;
        range(
            "lesion_free_fraction",
            (0.0..=1.0).contains(&self.lesion_free_fraction),
            "a fraction in 0…1",
            self.lesion_free_fraction.to_string(),
        )?;
        range(
            "noise_hu",
            self.noise_hu.is_finite() && self.noise_hu >= 0.0,
            "a finite number ≥ 0",
            self.noise_hu.to_string(),
        )?;
        range(
            "first",
            self.first <= MAX_FIRST,
            &format!("0…{MAX_FIRST}"),
            self.first.to_string(),
        )?;
        if self.slices * self.size * self.size > MAX_VOXELS {
            return Err(Error::invalid_param(
                "slices",
                format!(
                    "{} slices of {}×{} are too many for one volume (at most {MAX_VOXELS} voxels)",
                    self.slices, self.size, self.size
                ),
            ));
        }
        Ok(())
    }

    /// Pixel spacing in mm.
    pub fn pixel_mm(&self) -> f64 {
        self.field_of_view_mm / self.size as f64
    }

    /// The voxel-to-world (RAS+) affine of every volume: an axial stack as a scanner writes it,
    /// rows running to the patient's left and down to the back, slices from the feet up,
    /// centred on the origin.
    pub fn affine(&self) -> Affine {
        let (p, s) = (self.pixel_mm(), self.slice_mm);
        let half = |n: usize, step: f64| (n as f64 - 1.0) / 2.0 * step;
        Affine::from_columns(
            [-p, 0.0, 0.0],
            [0.0, -p, 0.0],
            [0.0, 0.0, s],
            [
                half(self.size, p),
                half(self.size, p),
                -half(self.slices, s),
            ],
        )
    }
}

/// One phantom volume.
#[derive(Debug, Clone)]
pub struct PhantomVolume {
    /// `phantom-000`, `phantom-001`, …
    pub name: String,
    /// HU, indexed `[i, j, k]` (column, row, slice) like every [`crate::volume::Volume`].
    pub hu: Array3<f32>,
    /// Truth, `[i, j, k]`: 0 background, 1 GGO, 2 consolidation, 3 other lung.
    pub labels: Array3<u8>,
    pub affine: Affine,
}

/// The name of volume `index`.
pub fn volume_name(index: usize) -> String {
    format!("phantom-{index:03}")
}

/// Volume `index` of a seed; the same whatever the number of threads.
pub fn generate_volume(
    config: &VolumePhantomConfig,
    seed: u64,
    index: usize,
) -> Result<PhantomVolume> {
    config.validate()?;
    let (n, s) = (config.slices, config.size);
    let mut rng = slice_rng(seed ^ VOLUME_SALT, index);
    let anatomy_seed: u64 = rng.random();
    let noise_seed: u64 = rng.random();
    let scenes = |k: usize| {
        let mut anatomy_rng = ChaCha8Rng::seed_from_u64(anatomy_seed);
        Scene::draw(&mut anatomy_rng, lung_scale(level(k, n)))
    };
    let plan = {
        let middle = Scene::draw(&mut ChaCha8Rng::seed_from_u64(anatomy_seed), 1.0);
        random_lesions_3d(&mut rng, &middle.anatomy.lungs, config, n)
    };

    // Paint every slice and its lesion fields, then threshold over the whole volume, so a patch
    // is cut at one level through all its slices.
    let painted: Vec<(Scene, Painted, Option<LesionFields>)> = (0..n)
        .into_par_iter()
        .map(|k| {
            let scene = scenes(k);
            let painted = scene.paint(s);
            let fields = plan
                .as_ref()
                .map(|plan| painted.volume_fields(&scene, plan, level(k, n)));
            (scene, painted, fields)
        })
        .collect();
    let thresholds = plan.as_ref().map(|plan| volume_thresholds(&painted, plan));

    let slices: Vec<SliceBuf> = painted
        .into_par_iter()
        .enumerate()
        .map(|(k, (scene, painted, fields))| {
            let fields = fields.map(|mut f| {
                if let Some((t_ggo, t_cons)) = thresholds {
                    f.t_ggo = t_ggo;
                    f.t_cons = t_cons;
                }
                f
            });
            let mut out = painted.finish(&scene, fields.as_ref());
            add_noise(&mut out.hu, config.noise_hu, &mut slice_rng(noise_seed, k));
            out
        })
        .collect();

    let mut hu = Array3::<f32>::zeros((s, s, n));
    let mut labels = Array3::<u8>::zeros((s, s, n));
    for (k, slice) in slices.iter().enumerate() {
        for r in 0..s {
            for c in 0..s {
                hu[(c, r, k)] = slice.hu[r * s + c];
                labels[(c, r, k)] = label_of_class(slice.class[r * s + c]);
            }
        }
    }
    Ok(PhantomVolume {
        name: volume_name(index),
        hu,
        labels,
        affine: config.affine(),
    })
}

/// The mask channel of a phantom pixel as a covseg label.
fn label_of_class(class: u8) -> u8 {
    match class {
        GGO => 1,
        CONSOLIDATION => 2,
        OTHER_LUNG => 3,
        _ => 0,
    }
}

/// Slice `k` of `n` as a level from −1 (lung base) to +1 (apex).
fn level(k: usize, n: usize) -> f32 {
    -1.0 + 2.0 * (k as f32 + 0.5) / n as f32
}

/// The lungs' in-plane size at a level: widest in the middle, narrower towards base and apex.
fn lung_scale(z: f32) -> f32 {
    0.45 + 0.55 * (1.0 - z * z).max(0.0).sqrt()
}

/// A lesion blob in 3-D, placed relative to its lung so it stays under the pleura at every level.
struct Blob3 {
    lung: usize,
    /// Direction from the lung centre (0 lateral, +π/2 posterior).
    angle: f32,
    /// Distance inside the pleura, in units of the full-size lung.
    depth: f32,
    /// Level of the centre (−1…1) and the spread through the slices, in level units.
    z: f32,
    sigma_z: f32,
    sigma: f32,
    amp: f32,
}

struct VolumePlan {
    total: f32,
    consolidation: f32,
    ggo: Vec<Blob3>,
    cons: Vec<Blob3>,
}

fn random_lesions_3d(
    rng: &mut ChaCha8Rng,
    lungs: &[Lung; 2],
    config: &VolumePhantomConfig,
    slices: usize,
) -> Option<VolumePlan> {
    if rng.random::<f64>() < config.lesion_free_fraction {
        return None;
    }
    let bilateral = rng.random::<f32>() < 0.8;
    let spread = if bilateral { 0.30 } else { 0.13 };
    let total = 0.03 + spread * rng.random::<f32>().powf(1.6);
    let share = if rng.random::<f32>() < 0.25 {
        0.0
    } else {
        rng.random_range(0.08f32..0.4)
    };
    let consolidation = total * share;
    let involved: Vec<usize> = if bilateral {
        vec![0, 1]
    } else {
        vec![rng.random_range(0usize..2)]
    };
    // Peripheral, posterior and basal, as COVID-19 pneumonia is.
    let mut clusters = Vec::new();
    for &lung in &involved {
        for _ in 0..rng.random_range(2usize..=6) {
            let angle = (0.5 + 0.9 * normal(rng)).clamp(-1.6, 2.4);
            let z = rng.random_range(-0.85f32..0.7);
            clusters.push((lung, angle, z));
        }
    }
    // Level units per mm through the slices, and the in-plane unit (half the field of view) in mm.
    let z_per_mm = 2.0 / (slices as f64 * config.slice_mm);
    let unit_mm = config.field_of_view_mm / 2.0;
    // The lung volume in (plane units² × level units), for the coverage estimate.
    let area = lung_area(lungs);
    let mean_scale2: f32 = (0..64)
        .map(|i| lung_scale(level(i, 64)).powi(2))
        .sum::<f32>()
        / 64.0;
    let lung_volume = area * mean_scale2 * 2.0;
    let size = 1.0 + total;
    let mut ggo = Vec::new();
    let mut covered = 0.0;
    while covered < 1.5 * total * lung_volume && ggo.len() < 600 {
        let (lung, angle, z) = clusters[rng.random_range(0..clusters.len())];
        let sigma = rng.random_range(0.025f32..0.055) * size;
        let depth = if rng.random::<f32>() < 0.15 {
            rng.random_range(0.1f32..0.2)
        } else {
            0.01 + 0.04 * normal(rng).abs() + 0.3 * sigma
        };
        let sigma_z =
            (f64::from(sigma) * unit_mm * z_per_mm) as f32 * rng.random_range(1.0f32..1.6);
        ggo.push(Blob3 {
            lung,
            angle: angle + 0.35 * normal(rng),
            depth,
            z: (z + 0.15 * normal(rng)).clamp(-0.95, 0.95),
            sigma_z,
            sigma,
            amp: rng.random_range(0.6f32..1.0),
        });
        // About 3σ² in plane once clipped by the pleura, over about 2.5σ_z of levels.
        covered += 3.0 * sigma * sigma * 2.5 * sigma_z;
    }
    let mut cons = Vec::new();
    let mut covered = 0.0;
    while consolidation > 0.0 && covered < 1.5 * consolidation * lung_volume && cons.len() < 300 {
        let parent = &ggo[rng.random_range(0..ggo.len())];
        let sigma = parent.sigma * rng.random_range(0.4f32..0.65);
        let sigma_z = parent.sigma_z * rng.random_range(0.5f32..0.8);
        cons.push(Blob3 {
            lung: parent.lung,
            angle: parent.angle + 0.3 * parent.sigma * normal(rng) / lungs[parent.lung].ax,
            depth: parent.depth,
            z: parent.z + 0.3 * parent.sigma_z * normal(rng),
            sigma_z,
            sigma,
            amp: rng.random_range(0.7f32..1.0),
        });
        covered += 3.0 * sigma * sigma * 2.5 * sigma_z;
    }
    Some(VolumePlan {
        total,
        consolidation,
        ggo,
        cons,
    })
}

/// The blobs of a 3-D plan as they cut the slice at level `z` of `scene`.
fn blobs_at(blobs: &[Blob3], scene: &Scene, z: f32) -> Vec<Blob> {
    let scale = lung_scale(z);
    blobs
        .iter()
        .filter_map(|b| {
            let dz = (z - b.z) / b.sigma_z;
            let weight = (-0.5 * dz * dz).exp();
            if weight < 0.02 {
                return None;
            }
            let lung = &scene.anatomy.lungs[b.lung];
            let (px, py) = lung.boundary(b.angle);
            let (nx, ny) = lung.normal(px, py);
            let depth = b.depth * scale;
            Some(Blob {
                x: px - nx * depth,
                y: py - ny * depth,
                sigma: b.sigma * scale,
                amp: b.amp * weight,
            })
        })
        .collect()
}

impl Painted {
    /// A volume slice's lesion fields; the thresholds are set for the whole volume afterwards.
    fn volume_fields(&self, scene: &Scene, plan: &VolumePlan, z: f32) -> LesionFields {
        let (grid, kind) = (self.grid, &self.kind);
        let s = grid.size;
        let mut ggo = vec![0.0f32; s * s];
        let mut cons = vec![0.0f32; s * s];
        add_blobs(&mut ggo, kind, grid, &blobs_at(&plan.ggo, scene, z));
        add_blobs(&mut cons, kind, grid, &blobs_at(&plan.cons, scene, z));
        for &i in &self.lung_pixels {
            let (x, y) = (grid.coord(i % s), grid.coord(i / s));
            ggo[i] *= 1.0 + 0.6 * scene.patchiness.at(x, y);
            cons[i] *= 1.0 + 0.5 * scene.patchiness.at(y, x);
        }
        LesionFields {
            ggo,
            cons,
            t_ggo: f32::INFINITY,
            t_cons: f32::INFINITY,
        }
    }
}

/// GGO and consolidation thresholds that cover the plan's shares of the volume's lung.
fn volume_thresholds(
    painted: &[(Scene, Painted, Option<LesionFields>)],
    plan: &VolumePlan,
) -> (f32, f32) {
    let lung: Vec<(f32, f32)> = painted
        .iter()
        .filter_map(|(_, p, f)| f.as_ref().map(|f| (p, f)))
        .flat_map(|(p, f)| p.lung_pixels.iter().map(|&i| (f.ggo[i], f.cons[i])))
        .collect();
    let n = lung.len() as f32;
    let mut values: Vec<f32> = lung.iter().map(|&(_, c)| c).collect();
    let t_cons = threshold_for(&mut values, (plan.consolidation * n).round() as usize);
    let consolidated = lung.iter().filter(|&&(_, c)| c >= t_cons).count();
    values.clear();
    values.extend(lung.iter().filter(|&&(_, c)| c < t_cons).map(|&(g, _)| g));
    let wanted = ((plan.total * n).round() as usize).saturating_sub(consolidated);
    (threshold_for(&mut values, wanted), t_cons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    fn small() -> VolumePhantomConfig {
        VolumePhantomConfig {
            volumes: 1,
            slices: 16,
            size: 64,
            ..VolumePhantomConfig::default()
        }
    }

    #[test]
    fn lesions_run_on_through_neighbouring_slices() {
        let v = generate_volume(&small(), 3, 0).unwrap();
        let n = v.labels.dim().2;
        let lesion = v.labels.mapv(|l| l == 1 || l == 2);
        let per_slice: Vec<usize> = lesion
            .axis_iter(Axis(2))
            .map(|s| s.iter().filter(|&&x| x).count())
            .collect();
        assert!(per_slice.iter().sum::<usize>() > 0, "{per_slice:?}");
        // Most lesion pixels have a lesion pixel at the same place in a neighbouring slice.
        let (mut total, mut continued) = (0, 0);
        for k in 0..n {
            for ((i, j), &here) in lesion.index_axis(Axis(2), k).indexed_iter() {
                if !here {
                    continue;
                }
                total += 1;
                let below = k > 0 && lesion[(i, j, k - 1)];
                let above = k + 1 < n && lesion[(i, j, k + 1)];
                continued += usize::from(below || above);
            }
        }
        let share = continued as f64 / total as f64;
        assert!(
            share > 0.8,
            "only {share:.2} of lesion voxels continue in z"
        );
        // Lesions sit in the lung; every slice has both lungs.
        for k in 0..n {
            let slice = v.labels.index_axis(Axis(2), k);
            let lung = slice.iter().filter(|&&l| l > 0).count();
            assert!(lung > 64 * 64 / 20, "slice {k}: {lung} lung pixels");
        }
    }

    #[test]
    fn involvement_follows_the_plan_and_volumes_differ() {
        let config = VolumePhantomConfig {
            volumes: 4,
            ..small()
        };
        let mut fractions = Vec::new();
        for index in 0..4 {
            let v = generate_volume(&config, 5, index).unwrap();
            let lung = v.labels.iter().filter(|&&l| l > 0).count();
            let lesion = v.labels.iter().filter(|&&l| l == 1 || l == 2).count();
            fractions.push(lesion as f64 / lung as f64);
        }
        for f in &fractions {
            assert!((0.02..=0.40).contains(f), "{fractions:?}");
        }
        assert!(fractions.windows(2).any(|w| w[0] != w[1]));
        let clean = VolumePhantomConfig {
            lesion_free_fraction: 1.0,
            ..small()
        };
        let v = generate_volume(&clean, 5, 0).unwrap();
        assert!(v.labels.iter().all(|&l| l == 0 || l == 3));
    }

    #[test]
    fn deterministic_and_thread_independent() {
        let config = small();
        let a = generate_volume(&config, 9, 1).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| generate_volume(&config, 9, 1)).unwrap();
        assert_eq!(a.hu, b.hu);
        assert_eq!(a.labels, b.labels);
        let c = generate_volume(&config, 9, 2).unwrap();
        assert_ne!(a.labels, c.labels);
    }

    #[test]
    fn the_affine_is_an_axial_stack_centred_on_the_origin() {
        let config = small();
        let a = config.affine();
        assert_eq!(a.orientation(), "LPS");
        let spacing = a.spacing();
        assert!((spacing[0] - 350.0 / 64.0).abs() < 1e-12);
        assert!((spacing[2] - 5.0).abs() < 1e-12);
        let centre = a.apply([31.5, 31.5, 7.5]);
        assert!(centre.iter().all(|c| c.abs() < 1e-9), "{centre:?}");
    }

    #[test]
    fn validate_names_the_field() {
        for (config, field) in [
            (
                VolumePhantomConfig {
                    slices: 2,
                    ..small()
                },
                "slices",
            ),
            (
                VolumePhantomConfig {
                    volumes: 0,
                    ..small()
                },
                "volumes",
            ),
            (
                VolumePhantomConfig {
                    slice_mm: 0.0,
                    ..small()
                },
                "slice_mm",
            ),
            (
                VolumePhantomConfig {
                    field_of_view_mm: f64::NAN,
                    ..small()
                },
                "field_of_view_mm",
            ),
            (
                VolumePhantomConfig {
                    size: 512,
                    slices: 1000,
                    ..small()
                },
                "slices",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("params.{field}:")), "{err}");
        }
    }
}
