#!/usr/bin/env python3
"""Retrieval for a RAG pipeline with vecidx, on generated embeddings.

A real pipeline embeds text chunks with a model; here each "document" gets
a vector near the centroid of its topic, which is what a good embedding
model produces for on-topic text. The example:

  1. builds a file-backed HNSW index of the documents (durable writes),
     keeping the texts in a side file of the application's own,
  2. closes it, as a separate indexing job would,
  3. reopens it and retrieves the context for a few questions, also with a
     filter on application metadata (the year of each document),
  4. adds fresh documents to the reopened index and finds them at once.

Run from the repository root after `make`:
    PYTHONPATH=python python3 examples/rag.py
(VECIDX_LIBRARY=/path/to/libvecidx.so if the library is elsewhere).
It exits non-zero if retrieval returns off-topic documents.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

try:
    import vecidx
except ImportError:  # run from a checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "python"))
    import vecidx

DIM = 96
TOPICS = ["astronomy", "baking", "chess", "databases", "gardening",
          "jazz", "sailing", "volcanoes"]
DOCS_PER_TOPIC = 400
NOISE = 0.6   # how far an on-topic document strays from its topic


def make_corpus(rng):
    centroids = rng.standard_normal((len(TOPICS), DIM)).astype(np.float32)
    n = len(TOPICS) * DOCS_PER_TOPIC
    topic = np.repeat(np.arange(len(TOPICS)), DOCS_PER_TOPIC)
    rng.shuffle(topic)
    vecs = centroids[topic] + NOISE * rng.standard_normal((n, DIM)).astype(
        np.float32)
    years = rng.integers(2015, 2025, n)
    texts = ["doc %d about %s (%d)" % (i, TOPICS[t], y)
             for i, (t, y) in enumerate(zip(topic, years))]
    return centroids, vecs, topic, years, texts


def embed_question(centroids, topic, rng):
    # A question is shorter and vaguer than a document: more noise.
    return centroids[topic] + 1.2 * NOISE * rng.standard_normal(DIM).astype(
        np.float32)


def main():
    rng = np.random.default_rng(2024)
    centroids, vecs, topic, years, texts = make_corpus(rng)
    failures = 0

    with tempfile.TemporaryDirectory(prefix="vecidx-rag-") as tmp:
        path = os.path.join(tmp, "docs.vx")
        meta_path = os.path.join(tmp, "docs.json")

        # 1. Index the corpus. sync="normal" groups fsyncs: a bulk load
        # does not need one per write, and close() syncs the rest.
        t0 = time.perf_counter()
        with vecidx.Index.open(path, dim=DIM, kind="hnsw", metric="cos",
                               create=True, sync="normal", M=16,
                               ef_construction=128) as index:
            index.add(np.arange(len(vecs)), vecs)
            index.checkpoint()   # fold the log into the main file
        with open(meta_path, "w") as f:
            json.dump({"texts": texts, "years": years.tolist()}, f)
        print("indexed %d documents on %d topics in %.2f s -> %s (%d kB)"
              % (len(vecs), len(TOPICS), time.perf_counter() - t0,
                 os.path.basename(path), os.path.getsize(path) // 1024))

        # 2-3. Reopen, as the serving process would: a reader, which maps
        # the file and searches it in place without loading it.
        with open(meta_path) as f:
            meta = json.load(f)
        t0 = time.perf_counter()
        index = vecidx.Index.open(path, readonly=True)
        print("reopened %r: %d documents in %.1f ms"
              % (index, len(index), 1000 * (time.perf_counter() - t0)))

        print()
        for t in (0, 3, 5):
            q = embed_question(centroids, t, rng)
            keys, dists = index.search(q, k=5, ef=64)
            on_topic = sum(topic[int(k)] == t for k in keys)
            print("question about %s: %d/5 retrieved documents on topic"
                  % (TOPICS[t], on_topic))
            for k, d in zip(keys, dists):
                print("    %.3f  %s" % (d, meta["texts"][int(k)]))
            failures += on_topic < 4

        # Metadata stays with the application; a filter applies it inside
        # the search, so k recent documents come back, not k minus the old.
        q = embed_question(centroids, 2, rng)
        recent = lambda key: meta["years"][key] >= 2023  # noqa: E731
        keys, dists = index.search(q, k=5, filter=recent)
        ok = all(meta["years"][int(k)] >= 2023 and topic[int(k)] == 2
                 for k in keys) and len(keys) == 5
        print("\nquestion about chess, documents from 2023 on only:")
        for k, d in zip(keys, dists):
            print("    %.3f  %s" % (d, meta["texts"][int(k)]))
        failures += not ok

        # The context a RAG pipeline would hand to the language model.
        context = "\n".join("- " + meta["texts"][int(k)] for k in keys[:3])
        print("\nprompt context:\n" + context)
        index.close()

        # 4. Documents arriving later: reopen for writing and add them.
        # With the default sync="full" each add is durable on return.
        with vecidx.Index.open(path) as index:
            new_key = len(vecs)
            new_vec = centroids[6] + NOISE * rng.standard_normal(DIM)
            index.add(new_key, new_vec)
            keys, _ = index.search(new_vec, k=1)
            print("\nadded doc %d about %s; nearest to itself: doc %d"
                  % (new_key, TOPICS[6], int(keys[0])))
            failures += int(keys[0]) != new_key
        with vecidx.Index.open(path, readonly=True) as index:
            print("after reopening: %d documents, doc %d present: %s"
                  % (len(index), new_key, new_key in index))
            failures += new_key not in index

    if failures:
        print("\nFAILED: %d retrieval checks went wrong" % failures)
        return 1
    print("\nall retrieval checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
