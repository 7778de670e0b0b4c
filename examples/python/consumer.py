"""Read rlap's verdicts and join them back to the rows of the array the producer streamed.

Reads `<input>.verdicts` from the beginning (explicit assignment, no consumer group, nothing
committed) until every row 0..n-1 has a verdict or --timeout passes. Verdicts are proto3 JSON
(run rlap with `kafka.verdict_format = "json"`); the message key and the verdict's `sampleId`
are the sample id the producer gave, "<id-prefix><row>", which is the join key. Delivery is at
least once, so a row may get more than one verdict (after a daemon restart): the last one per
row wins and the duplicates are counted.

Writes an .npz with, per row: has_verdict, noisy, posterior_noisy, given_label,
predicted_label, model_version, partition, offset (of the verdict). With --data (the
producer's .npz holding `true_labels`), it also scores the noisy flags against the flips.
Prints a one-line JSON summary last. Exits 1 when rows are left without a verdict.

Usage: python consumer.py --brokers HOST:PORT --topic samples.verdicts --rows N --out verdicts.npz
       [--data data.npz] [--id-prefix row-] [--timeout 300]
"""

import argparse
import json
import sys
import time

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def field(v, camel, snake, default):
    """A proto3 JSON field by its JSON name or its proto name; absent means the default."""
    return v.get(camel, v.get(snake, default))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True, help="the verdict topic, <input>.verdicts")
    ap.add_argument("--rows", type=int, required=True, help="rows the producer sent")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="the producer's .npz; with true_labels, score the verdicts")
    ap.add_argument("--id-prefix", default="row-")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    n = a.rows
    has = np.zeros(n, bool)
    noisy = np.zeros(n, bool)
    posterior = np.full(n, np.nan)
    given = np.full(n, -1, np.int64)
    predicted = np.full(n, -1, np.int64)
    version = np.zeros(n, np.int64)
    partition = np.full(n, -1, np.int64)
    offset = np.full(n, -1, np.int64)
    duplicates = foreign = 0

    c = Consumer({"bootstrap.servers": a.brokers, "group.id": "rlap-example-reader", "enable.auto.commit": False})
    deadline = time.monotonic() + a.timeout
    while True:  # the verdict topic appears once the daemon has started
        md = c.list_topics(a.topic, timeout=10).topics.get(a.topic)
        if md is not None and md.error is None and md.partitions:
            break
        if time.monotonic() > deadline:
            sys.exit(f"topic {a.topic} did not appear within {a.timeout} s")
        time.sleep(1)
    c.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in md.partitions])
    while not has.all() and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            print(f"consumer: {msg.error()}", file=sys.stderr)
            continue
        headers = dict(msg.headers() or [])
        if headers.get("content-type", b"").decode() != "application/json":
            sys.exit('the verdicts are not JSON: run rlap with kafka.verdict_format = "json"')
        v = json.loads(msg.value())
        sample_id = field(v, "sampleId", "sample_id", "")
        row = sample_id[len(a.id_prefix):] if sample_id.startswith(a.id_prefix) else ""
        if not row.isdigit() or int(row) >= n:
            foreign += 1  # not one of ours (another producer on the topic)
            continue
        i = int(row)
        duplicates += int(has[i])
        has[i] = True
        noisy[i] = bool(field(v, "noisy", "noisy", False))
        posterior[i] = float(field(v, "posteriorNoisy", "posterior_noisy", 0.0))
        given[i] = int(field(v, "givenLabel", "given_label", 0))
        predicted[i] = int(field(v, "predictedLabel", "predicted_label", 0))
        version[i] = int(field(v, "modelVersion", "model_version", 0))  # uint64: a JSON string
        partition[i] = msg.partition()
        offset[i] = msg.offset()
    c.close()
    np.savez(a.out, has_verdict=has, noisy=noisy, posterior_noisy=posterior, given_label=given,
             predicted_label=predicted, model_version=version, partition=partition, offset=offset)
    summary = {"rows": n, "verdicted": int(has.sum()), "duplicates": duplicates, "foreign": foreign,
               "noisy": int(noisy.sum()), "model_versions": sorted(set(version[has].tolist()))}
    if a.data:
        z = np.load(a.data)
        labels = np.asarray(z["labels"])
        summary["given_labels_match"] = bool(np.array_equal(given[has], labels[:n][has]))
        if "true_labels" in z:
            flipped = labels[:n] != np.asarray(z["true_labels"])[:n]
            tp = int((noisy & flipped & has).sum())
            summary["precision"] = round(tp / max(1, int((noisy & has).sum())), 4)
            summary["recall"] = round(tp / max(1, int((flipped & has).sum())), 4)
    print(json.dumps(summary))
    if not has.all():
        sys.exit(f"{n - int(has.sum())} rows have no verdict after {a.timeout} s")


if __name__ == "__main__":
    main()
