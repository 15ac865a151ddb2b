//! The bundled model, loaded from local files, reproduces the reference vectors of
//! ../shared/EMBEDDING.md (computed there with Python onnxruntime on the same files).

mod common;

use memesh::index::dot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproduces_reference_vectors() {
    let e = common::embedder();
    assert_eq!(e.info().dim, 384);
    let out = e
        .embed(
            "test",
            vec![
                "The cat sits on the mat.".into(),
                "A feline is resting on a rug.".into(),
                "Quarterly revenue grew by 12 percent.".into(),
            ],
        )
        .await
        .unwrap();
    let expected = [
        0.13086669f32,
        -0.03257713,
        -0.0226191,
        0.03991013,
        -0.03604668,
    ];
    for (got, want) in out[0].vector.iter().zip(expected) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    for e in &out {
        assert!(
            (dot(&e.vector, &e.vector) - 1.0).abs() < 1e-4,
            "unit length"
        );
    }
    let cat_feline = dot(&out[0].vector, &out[1].vector);
    let cat_revenue = dot(&out[0].vector, &out[2].vector);
    assert!((cat_feline - 0.571).abs() < 0.002, "{cat_feline}");
    assert!(cat_feline > cat_revenue + 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_single_embeddings_agree() {
    let e = common::embedder();
    let texts: Vec<String> = (0..40)
        .map(|i| format!("memory number {i} about topic {}", i % 7))
        .collect();
    let batch = e.embed("test", texts.clone()).await.unwrap();
    let single = e.embed("test", vec![texts[17].clone()]).await.unwrap();
    assert!(dot(&batch[17].vector, &single[0].vector) > 0.9999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_text_is_truncated_and_flagged() {
    let e = common::embedder();
    let long = "word ".repeat(400);
    let out = e.embed("test", vec![long, "short".into()]).await.unwrap();
    assert!(out[0].truncated);
    assert_eq!(out[0].tokens, 256);
    assert!(!out[1].truncated);
    assert_eq!(out[1].tokens, 3, "[CLS] short [SEP]");
}

#[test]
fn corrupt_or_missing_files_are_refused_with_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(common::TEST_MODEL.id);
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
    let err = memesh::embed::ModelFiles::locate(common::TEST_MODEL, Some(dir.path()))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        std::fs::read(src.join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let err = memesh::embed::ModelFiles::locate(common::TEST_MODEL, Some(dir.path()))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("is missing"), "{err:#}");

    let err = memesh::embed::RuntimeLibrary::locate(Some(&dir.path().join("nope.so")))
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("scripts/fetch-runtime.sh"),
        "{err:#}"
    );
}
