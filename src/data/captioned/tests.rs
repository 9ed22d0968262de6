use super::*;

fn folder(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcm-captioned-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 6×4 image whose left half is black and right half white.
fn save(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(6, 4, |x, _| {
        if x < 3 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    img.save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(dir: &Path) -> Result<Folder> {
    Folder::read(dir, &FolderOptions::default())
}

fn error(dir: &Path, opts: &FolderOptions) -> String {
    Folder::read(dir, opts).unwrap_err().to_string()
}

/// (path relative to `dir`, caption, repeats) of each entry, in order.
fn pairs(f: &Folder) -> Vec<(String, String, u32)> {
    f.entries
        .iter()
        .map(|e| {
            let rel = e.image.strip_prefix(&f.dir).unwrap().to_string_lossy().into_owned();
            (rel, e.caption.clone(), e.repeats)
        })
        .collect()
}

fn p(rel: &str, caption: &str, repeats: u32) -> (String, String, u32) {
    (rel.into(), caption.into(), repeats)
}

/// Side files (.txt and kohya's .caption), metadata.jsonl and metadata.csv name the same
/// (image, caption) pairs, in sorted path order, sub-folders included.
#[test]
fn every_layout_reads_to_the_same_pairs() {
    let side = folder("side");
    save(&side.join("b.png"));
    save(&side.join("a.png"));
    save(&side.join("sub/c.png"));
    write(&side.join("a.txt"), "a cat\n");
    write(&side.join("b.caption"), "two dogs");
    write(&side.join("sub/c.txt"), "a bird");
    let want = vec![
        p("a.png", "a cat", 1),
        p("b.png", "two dogs", 1),
        p("sub/c.png", "a bird", 1),
    ];
    assert_eq!(pairs(&read(&side).unwrap()), want);
    let jsonl = folder("jsonl");
    for f in ["a.png", "b.png", "sub/c.png"] {
        save(&jsonl.join(f));
    }
    write(
        &jsonl.join("metadata.jsonl"),
        "{\"file_name\": \"sub/c.png\", \"text\": \"a bird\"}\n\n\
         {\"file_name\": \"b.png\", \"text\": \"two dogs\", \"extra\": 3}\n\
         {\"file_name\": \"./a.png\", \"text\": \"a cat\"}\n",
    );
    assert_eq!(pairs(&read(&jsonl).unwrap()), want);
    std::fs::remove_file(jsonl.join("metadata.jsonl")).unwrap();
    write(
        &jsonl.join("metadata.csv"),
        "file_name,text\nb.png,two dogs\nsub/c.png,a bird\na.png,a cat\n",
    );
    assert_eq!(pairs(&read(&jsonl).unwrap()), want);
}

/// RFC 4180: quoted CSV fields keep their commas, doubled quotes and line breaks.
#[test]
fn csv_quoted_captions_are_read_whole() {
    let d = folder("csvquote");
    save(&d.join("a.png"));
    save(&d.join("b.png"));
    write(
        &d.join("metadata.csv"),
        "file_name,text\r\na.png,\"a cat, a dog and \"\"friends\"\"\"\r\n\"b.png\",\"two\nlines\"\r\n",
    );
    let got = pairs(&read(&d).unwrap());
    assert_eq!(
        got,
        vec![
            p("a.png", "a cat, a dog and \"friends\"", 1),
            p("b.png", "two\nlines", 1)
        ]
    );
    write(&d.join("metadata.csv"), "file_name,text\na.png,x,extra\nb.png,y\n");
    let e = read(&d).unwrap_err();
    assert!(format!("{e:#}").contains("metadata.csv: malformed CSV"), "{e:#}");
}

/// --caption-column picks another column; an absent one is named with the file and the
/// columns that exist, in both metadata formats.
#[test]
fn the_caption_column_is_chosen_and_an_absent_one_named() {
    let d = folder("column");
    save(&d.join("a.png"));
    write(
        &d.join("metadata.csv"),
        "file_name,prompt,text\na.png,from prompt,from text\n",
    );
    let prompt = FolderOptions {
        caption_column: "prompt".into(),
        ..FolderOptions::default()
    };
    assert_eq!(Folder::read(&d, &prompt).unwrap().captions(), vec!["from prompt"]);
    assert_eq!(read(&d).unwrap().captions(), vec!["from text"]);
    let other = FolderOptions {
        caption_column: "caption".into(),
        ..FolderOptions::default()
    };
    let e = error(&d, &other);
    assert!(
        e.contains("metadata.csv: no column \"caption\" (it has: file_name, prompt, text;"),
        "{e}"
    );
    std::fs::remove_file(d.join("metadata.csv")).unwrap();
    write(
        &d.join("metadata.jsonl"),
        "{\"file_name\": \"a.png\", \"prompt\": \"p\"}\n",
    );
    let e = error(&d, &other);
    assert!(
        e.contains("metadata.jsonl line 1: no column \"caption\" (it has: file_name, prompt;"),
        "{e}"
    );
    assert!(e.contains("--caption-column"), "{e}");
    assert_eq!(Folder::read(&d, &prompt).unwrap().captions(), vec!["p"]);
}

/// kohya's N_concept folders are read recursively and their images repeat N times; hidden
/// files and folders are passed over.
#[test]
fn kohya_folders_are_recursive_and_repeat() {
    let d = folder("kohya");
    save(&d.join("10_cats/a.png"));
    write(&d.join("10_cats/a.caption"), "cat");
    save(&d.join("10_cats/more/b.jpg"));
    write(&d.join("10_cats/more/b.txt"), "cat b");
    save(&d.join("misc/c.png"));
    write(&d.join("misc/c.txt"), "c");
    save(&d.join("top.png"));
    write(&d.join("top.txt"), "top");
    write(&d.join(".DS_Store"), "junk");
    write(&d.join(".git/config"), "junk");
    write(&d.join("10_cats/.hidden.txt"), "junk");
    let f = read(&d).unwrap();
    assert_eq!(
        pairs(&f),
        vec![
            p("10_cats/a.png", "cat", 10),
            p("10_cats/more/b.jpg", "cat b", 10),
            p("misc/c.png", "c", 1),
            p("top.png", "top", 1)
        ]
    );
    assert_eq!(
        f.notes,
        vec!["kohya repeat folders: 10_cats ×10 (2 images); each image counts N times when batches are drawn"]
    );
    save(&d.join("0_none/x.png"));
    write(&d.join("0_none/x.txt"), "x");
    assert!(read(&d)
        .unwrap_err()
        .to_string()
        .contains("0_none: a kohya repeat folder with 0 repeats"));
}

/// A file that is neither an image, a caption nor metadata is an error naming it and the
/// count, unless --skip-unknown-files, which says how many it passed over.
#[test]
fn unknown_files_are_named_or_skipped_with_a_count() {
    let d = folder("unknown");
    save(&d.join("a.png"));
    write(&d.join("a.txt"), "a");
    write(&d.join("notes.md"), "x");
    write(&d.join("sub/anim.gif"), "x");
    let e = error(&d, &FolderOptions::default());
    assert!(
        e.starts_with(&format!("{}: neither an image", d.join("notes.md").display())),
        "{e}"
    );
    assert!(
        e.contains("(2 such files in") && e.contains("--skip-unknown-files"),
        "{e}"
    );
    let skip = FolderOptions {
        skip_unknown: true,
        ..FolderOptions::default()
    };
    let f = Folder::read(&d, &skip).unwrap();
    assert_eq!(f.captions(), vec!["a"]);
    assert!(f.notes[0].contains("passed over 2 files"), "{:?}", f.notes);
}

/// Images the metadata does not list (issue 24), listed files that are missing, a side caption
/// beside metadata and two metadata files are errors naming the file.
#[test]
fn metadata_must_list_every_image() {
    let d = folder("unlisted");
    for f in ["a.png", "b.png", "sub/c.webp"] {
        save(&d.join(f));
    }
    write(
        &d.join("metadata.jsonl"),
        "{\"file_name\": \"a.png\", \"text\": \"a\"}\n",
    );
    let e = error(&d, &FolderOptions::default());
    assert!(
        e.starts_with(&format!("{}: not listed in", d.join("b.png").display())) && e.contains("(2 images"),
        "{e}"
    );
    write(
        &d.join("metadata.jsonl"),
        "{\"file_name\": \"a.png\", \"text\": \"a\"}\n{\"file_name\": \"z.png\", \"text\": \"z\"}\n",
    );
    assert!(error(&d, &FolderOptions::default()).contains("metadata.jsonl line 2:"));
    write(
        &d.join("metadata.jsonl"),
        "{\"file_name\": \"../a.png\", \"text\": \"a\"}\n",
    );
    assert!(error(&d, &FolderOptions::default()).contains("must be a path relative to the folder"));
    write(&d.join("metadata.csv"), "file_name,text\n");
    assert!(error(&d, &FolderOptions::default()).contains("two metadata files"));
    std::fs::remove_file(d.join("metadata.csv")).unwrap();
    write(&d.join("a.txt"), "a");
    assert!(error(&d, &FolderOptions::default()).contains("a.txt: a caption side file in a folder with"));
    std::fs::remove_file(d.join("metadata.jsonl")).unwrap();
    write(&d.join("sub/metadata.jsonl"), "");
    assert!(error(&d, &FolderOptions::default()).contains("only a metadata file at the top"));
}

/// Side captions pair one to one: two captions for an image, a caption without an image
/// and an image without a caption are errors naming the files.
#[test]
fn side_captions_pair_one_to_one() {
    let d = folder("pairing");
    save(&d.join("a.png"));
    let e = error(&d, &FolderOptions::default());
    assert!(e.contains("a.png: no caption"), "{e}");
    write(&d.join("a.txt"), "one");
    write(&d.join("a.caption"), "two");
    let e = error(&d, &FolderOptions::default());
    assert!(
        e.contains("a.caption and") && e.contains("a.txt: two captions for"),
        "{e}"
    );
    std::fs::remove_file(d.join("a.caption")).unwrap();
    write(&d.join("orphan.caption"), "x");
    let e = error(&d, &FolderOptions::default());
    assert!(e.contains("orphan.caption: a caption without an image"), "{e}");
    std::fs::remove_file(d.join("orphan.caption")).unwrap();
    save(&d.join("a.jpg"));
    assert!(error(&d, &FolderOptions::default()).contains("two images share one caption name"));
}

/// A lossless WebP decodes to the same pixels as the PNG of the same image.
#[test]
fn webp_decodes_like_png() {
    let d = folder("webp");
    let img = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 25) as u8, (y * 30) as u8, 77]));
    img.save(d.join("a.png")).unwrap();
    let file = std::fs::File::create(d.join("b.webp")).unwrap();
    image::codecs::webp::WebPEncoder::new_lossless(file)
        .encode(img.as_raw(), 9, 7, image::ExtendedColorType::Rgb8)
        .unwrap();
    write(&d.join("a.txt"), "png");
    write(&d.join("b.txt"), "webp");
    let f = read(&d).unwrap();
    let x = load_chunk(&f.entries, 5).unwrap();
    assert_eq!(x.dims(), &[2, 3, 5, 5]);
    let (a, b) = (x.get(0).unwrap(), x.get(1).unwrap());
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// Resizing keeps the shorter side and the centre, values in [-1, 1].
#[test]
fn images_are_resized_and_centre_cropped() {
    let d = folder("crop");
    save(&d.join("a.png"));
    write(&d.join("a.txt"), "a");
    let x = load_chunk(&read(&d).unwrap().entries, 4).unwrap();
    // 6×4 → 6×4 at r = 4, crop columns 1..5: black, black, white, white.
    let row = x
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(row, vec![-1.0, -1.0, 1.0, 1.0]);
}

/// A broken image, a bad metadata line, an empty folder and a bad resolution are errors
/// naming the file or flag.
#[test]
fn unreadable_inputs_are_named() {
    let d = folder("bad");
    assert!(read(&d).unwrap_err().to_string().contains("no images"));
    save(&d.join("a.png"));
    write(&d.join("a.txt"), "x");
    write(&d.join("c.jpg"), "not a jpeg");
    write(&d.join("c.txt"), "y");
    let f = read(&d).unwrap();
    let e = load_chunk(&f.entries, 4).unwrap_err().to_string();
    assert!(e.contains("c.jpg: cannot decode image"), "{e}");
    assert!(load_chunk(&f.entries, 0)
        .unwrap_err()
        .to_string()
        .starts_with("--resolution 0"));
    std::fs::remove_file(d.join("a.txt")).unwrap();
    std::fs::remove_file(d.join("c.txt")).unwrap();
    write(&d.join("metadata.jsonl"), "{\"file_name\": \"a.png\"}\n");
    let e = read(&d).unwrap_err().to_string();
    assert!(e.contains("metadata.jsonl line 1: no column \"text\""), "{e}");
    write(&d.join("metadata.jsonl"), "[1]\n");
    assert!(read(&d).unwrap_err().to_string().contains("line 1: not a JSON object"));
}
