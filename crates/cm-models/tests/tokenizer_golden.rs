//! The CLIP tokenizer against transformers' `CLIPTokenizer` (golden ids from
//! `scripts/gen_fixtures.py`), through each of the three ways to load it, plus bad input.

mod common;

use cm_models::clip::ClipTokenizer;
use cm_models::ModelError;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = common::fixtures().join("tokenizer_golden.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_all(tokenizer: &ClipTokenizer, source: &str) {
    let cases = cases();
    assert!(
        cases.len() >= 25,
        "the golden set must cover at least 25 strings"
    );
    for case in &cases {
        let ids = tokenizer.encode(&case.text).unwrap();
        assert_eq!(
            ids, case.input_ids,
            "{source}: ids differ for {:?}",
            case.text
        );
    }
}

#[test]
fn embedded_sd15_tokenizer_matches_transformers() {
    check_all(&ClipTokenizer::sd15().unwrap(), "embedded");
}

#[test]
fn tokenizer_json_asset_matches_transformers() {
    let path = common::fixtures().join("../../assets/tokenizer/tokenizer.json");
    check_all(
        &ClipTokenizer::from_tokenizer_json(path).unwrap(),
        "tokenizer.json",
    );
}

#[test]
fn vocab_and_merges_folder_matches_transformers() {
    // The tiny pipeline's tokenizer/ has the SD1.5 repository layout: vocab.json + merges.txt only.
    let dir = common::fixtures().join("tiny-sd/tokenizer");
    assert!(
        !dir.join("tokenizer.json").exists(),
        "fixture must exercise the vocab/merges path"
    );
    check_all(
        &ClipTokenizer::from_folder(dir).unwrap(),
        "vocab.json + merges.txt",
    );
}

#[test]
fn astronaut_prompt_ids() {
    let tokenizer = ClipTokenizer::sd15().unwrap();
    let ids = tokenizer
        .encode("a photograph of an astronaut riding a horse")
        .unwrap();
    assert_eq!(
        &ids[..10],
        &[49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    );
    assert!(ids[10..].iter().all(|&id| id == 49407));
    assert_eq!(ids.len(), 77);
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(
        tokenizer.decode(&ids).unwrap(),
        "a photograph of an astronaut riding a horse"
    );
}

#[test]
fn long_prompt_is_truncated_to_77_with_end_token() {
    let tokenizer = ClipTokenizer::sd15().unwrap();
    let text = "red green blue ".repeat(40);
    assert!(tokenizer.is_truncated(&text).unwrap());
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    assert_eq!(ids[76], 49407);
    assert!(ids[1..76].iter().all(|&id| id != 49407));
}

#[test]
fn batch_tensor_has_one_row_per_prompt() {
    let tokenizer = ClipTokenizer::sd15().unwrap();
    let ids = tokenizer
        .encode_batch::<common::TestBackend>(&["a cat", ""], &common::device())
        .unwrap();
    assert_eq!(ids.dims(), [2, 77]);
    let row: Vec<i64> = ids
        .slice([1..2, 0..3])
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    assert_eq!(row, vec![49406, 49407, 49407]);
}

#[test]
fn missing_and_corrupt_tokenizer_files_name_the_file() {
    let dir = common::temp_dir("tokenizer-bad");
    let missing = dir.join("nope.json");
    let err = ClipTokenizer::from_tokenizer_json(&missing).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.json"), "{err}");

    let corrupt = dir.join("tokenizer.json");
    std::fs::write(&corrupt, b"{\"model\": 42").unwrap();
    let err = ClipTokenizer::from_tokenizer_json(&corrupt).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let empty = common::temp_dir("tokenizer-empty");
    let err = ClipTokenizer::from_folder(&empty).unwrap_err();
    assert!(
        err.to_string().contains("vocab.json and merges.txt"),
        "{err}"
    );

    std::fs::write(
        empty.join("vocab.json"),
        br#"{"a": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#,
    )
    .unwrap();
    std::fs::write(
        empty.join("merges.txt"),
        "#version: 0.2\na b\nthis line is bad\n",
    )
    .unwrap();
    let err = ClipTokenizer::from_folder(&empty).unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
    assert!(err.to_string().contains("merges.txt"), "{err}");
}
