//! docs/ledger-format.md must hold exactly the values the code computes.

#[test]
fn the_document_holds_the_computed_test_vectors() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/ledger-format.md"
    ))
    .expect("docs/ledger-format.md");
    let v = queue_eventstore::vectors::compute().unwrap();
    let mut expected = vec![
        v.mac_key_hex.clone(),
        v.checkpoint_private_key.clone(),
        v.checkpoint_verifier_key.clone(),
        v.root_2.clone(),
        v.root_3.clone(),
        v.checkpoint_note.clone(),
    ];
    for e in &v.events {
        expected.extend([
            format!("```\n{}\n```", e.canonical),
            e.prev_hash.clone(),
            e.hash.clone(),
            e.mac.clone(),
        ]);
    }
    expected.extend(v.leaf_hashes.iter().cloned());
    expected.push(v.inclusion_proof_leaf_1_size_3.join(", "));
    expected.push(v.consistency_proof_2_to_3.join(", "));
    for value in expected {
        assert!(
            doc.contains(&value),
            "docs/ledger-format.md lacks the computed value:\n{value}"
        );
    }
}
