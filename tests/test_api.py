"""src.api.Recognizer against the command-line paths it wraps: test.py's decode_dataset for features,
transcribe.py for audio files, and one-line errors for bad input."""
import numpy as np
import pytest
import soundfile as sf

from src.api import Recognizer
from src.config import DataConfig, DecodingConfig
from src.data.dataset import SpeechDataset
from src.decoding import decode_dataset
from src.errors import UserError
from test_transcribe import audio, checkpoint  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from test_resume import make_corpus

    return make_corpus(tmp_path_factory.mktemp("api"), n_train=4, n_dev=5)


def test_features_decode_as_test_py_decodes_them(checkpoint, corpus):  # noqa: F811
    path, model = checkpoint
    dataset = SpeechDataset(corpus, "dev-clean", normalize="utterance")
    expected, _ = decode_dataset(model, dataset, DataConfig(num_workers="0"), DecodingConfig(beam_size=3))
    asr = Recognizer.load(path, device="cpu", beam_size=3, batch_size=2)
    raw = [np.load(u) for u in sorted((corpus / "dev-clean" / "mfcc").glob("*.npy"))]  # as the files hold them
    assert [dataset.names[i] for i in range(len(dataset))] == [p.stem for p in
                                                              sorted((corpus / "dev-clean" / "mfcc").glob("*.npy"))]
    assert asr.transcribe_batch(raw) == expected
    assert asr.transcribe_features(raw[2]) == expected[2]


def test_audio_gives_what_transcribe_py_gives(checkpoint, audio, tmp_path):  # noqa: F811
    from src.transcribe import transcribe

    path, _ = checkpoint
    expected = transcribe(path, list(audio), DecodingConfig(method="greedy"), "cpu")
    asr = Recognizer.load(path, device="cpu", method="greedy")
    assert [asr.transcribe(p) for p in audio] == expected
    wave, rate = sf.read(audio[0], dtype="float32")
    assert asr.transcribe(wave, sample_rate=rate) == expected[0]
    assert asr.transcribe(np.zeros(16000, dtype=np.float32), sample_rate=16000) == ""  # silence: nothing


def test_bad_input_is_one_line(checkpoint, tmp_path):  # noqa: F811
    path, _ = checkpoint
    with pytest.raises(UserError, match="decoding.beam_size"):
        Recognizer.load(path, device="cpu", beam_size=0)
    with pytest.raises(UserError, match="unknown config key 'decoding.beam'"):
        Recognizer.load(path, device="cpu", beam=3)
    with pytest.raises(UserError, match="checkpoint not found"):
        Recognizer.load(tmp_path / "none.pt", device="cpu")
    asr = Recognizer.load(path, device="cpu", method="greedy")
    with pytest.raises(UserError, match=r"features\[0\]: expected \(T, 28\)"):
        asr.transcribe_features(np.zeros((10, 13), dtype=np.float32))
    with pytest.raises(UserError, match="sample_rate"):
        asr.transcribe(np.zeros(16000, dtype=np.float32))
    for err in (pytest.raises(UserError), ):
        with err:
            asr.transcribe_features(np.full((10, 28), np.nan, dtype=np.float32))
