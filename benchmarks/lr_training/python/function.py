"""lr_training: train a logistic-regression sentiment classifier on review texts
(FunctionBench's lr_training: pandas + TF-IDF + scikit-learn LogisticRegression)."""

import io
import pickle
import time

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression


def handler(event):
    t0 = time.perf_counter()
    df = pd.read_csv(io.StringIO(event["dataset"]))
    n_train = int(len(df) * 0.8)
    train, test = df.iloc[:n_train], df.iloc[n_train:]
    t1 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    x_train = vectorizer.fit_transform(train["Text"])
    model = LogisticRegression(max_iter=int(event.get("max_iter", 200)))
    model.fit(x_train, train["Score"])
    t2 = time.perf_counter()
    accuracy = float(model.score(vectorizer.transform(test["Text"]), test["Score"]))
    blob = pickle.dumps((vectorizer, model))
    t3 = time.perf_counter()
    return {
        "result": {
            "samples": int(len(df)),
            "train_samples": int(len(train)),
            "features": int(x_train.shape[1]),
            "classes": sorted(int(c) for c in model.classes_),
            "test_accuracy": accuracy,
            "model_bytes": len(blob),
        },
        "measurement": {
            "load_time": (t1 - t0) * 1e6,
            "train_time": (t2 - t1) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
            "evaluate_time": (t3 - t2) * 1e6,
        },
    }
