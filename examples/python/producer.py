"""Stream the rows of a NumPy array into rlap's input topic with confluent-kafka.

Each row i becomes one rlap.v1.LabeledSample in canonical proto3 JSON (the header
`content-type: application/json` tells rlap which encoding; no generated code needed):

  key   = "<id-prefix><i>"   (the sample id: rlap echoes it in the verdict, the join key)
  value = {"id": "<id-prefix><i>", "features": [...D floats...], "shape": [...], "label": y_i}

`shape` is the row's own shape when it has more than one dimension (images, e.g. [28, 28]);
tabular rows are flat. Input: an .npz with `features` [n, ...] and `labels` [n], or two .npy
files. The topic is created (with --partitions) when it does not exist.

Usage: python producer.py --brokers HOST:PORT --topic samples --data data.npz
       python producer.py --brokers HOST:PORT --topic samples --features X.npy --labels y.npy
"""

import argparse
import json
import sys
import time

import numpy as np
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def load(a):
    if a.data:
        z = np.load(a.data)
        return z["features"], z["labels"]
    if a.features and a.labels:
        return np.load(a.features), np.load(a.labels)
    sys.exit("give --data FILE.npz, or --features X.npy and --labels y.npy")


def ensure_topic(brokers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    if topic in admin.list_topics(timeout=10).topics:
        return
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
    try:
        fut.result(timeout=30)
        print(f"created topic {topic} ({partitions} partitions)")
    except KafkaException as e:
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--data", help=".npz with arrays features [n, ...] and labels [n]")
    ap.add_argument("--features", help=".npy of features [n, ...]")
    ap.add_argument("--labels", help=".npy of integer labels [n]")
    ap.add_argument("--id-prefix", default="row-")
    ap.add_argument("--partitions", type=int, default=3)
    a = ap.parse_args()
    x, y = load(a)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if len(x) != len(y):
        sys.exit(f"{len(x)} feature rows but {len(y)} labels")
    ensure_topic(a.brokers, a.topic, a.partitions)

    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(f"{msg.key()}: {err}")

    p = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True, "linger.ms": 20})
    t = time.perf_counter()
    for i, (row, label) in enumerate(zip(x, y)):
        sample_id = f"{a.id_prefix}{i}"
        sample = {"id": sample_id, "features": row.ravel().tolist(), "label": int(label)}
        if row.ndim > 1:
            sample["shape"] = list(row.shape)
        while True:
            try:
                p.produce(
                    a.topic,
                    key=sample_id,
                    value=json.dumps(sample),
                    headers={"content-type": "application/json"},
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.1)
        p.poll(0)
    left = p.flush(60)
    if failed or left:
        sys.exit(f"{len(failed)} samples not delivered, {left} still queued: {failed[:3]}")
    print(f"produced {len(x)} samples into {a.topic} in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
