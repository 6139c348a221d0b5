"""PyTorch side of `make bench-peers` (runs in the peers' venv): TRL's RewardTrainer, or a plain
Bradley–Terry loop, on the shapes of `bench/peers/shapes.py`.

`python torch_rm.py trl|torch` is a worker driven over stdin/stdout, so that the parent can alternate
the trainers of both frameworks in one sitting: it warms up, prints `@@ready`, then for each line
`run K` trains K more steps and prints `@@done SECONDS` (wall time of those K steps, the trainer's own
per-step overhead included); `quit` ends it. Any other output of the libraries is not a `@@` line.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes as S  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForSequenceClassification  # noqa: E402

WARMUP = 3


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def reply(msg: str) -> None:
    sys.stdout.write(f"@@{msg}\n")
    sys.stdout.flush()


def model() -> LlamaForSequenceClassification:
    cfg = LlamaConfig(vocab_size=S.VOCAB, hidden_size=S.D_MODEL, intermediate_size=S.D_FF,
                      num_hidden_layers=S.N_LAYERS, num_attention_heads=S.N_HEADS,
                      num_key_value_heads=S.N_KV_HEADS, max_position_embeddings=S.SEQ_LEN,
                      rms_norm_eps=S.NORM_EPS, rope_theta=S.ROPE_THETA, tie_word_embeddings=True,
                      num_labels=1, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                      attention_dropout=0.0)
    torch.manual_seed(0)
    m = LlamaForSequenceClassification(cfg).float()
    n = sum(p.numel() for p in m.parameters())
    assert n == S.N_PARAMS, f"torch model has {n} parameters, want {S.N_PARAMS}"
    return m


class Driver:
    """Counts steps; at each boundary reports the time since the last one and waits for a command."""

    def __init__(self):
        self.left, self.t0 = WARMUP, None

    def tick(self) -> bool:
        """Call after each step; returns False when told to quit."""
        self.left -= 1
        if self.left > 0:
            return True
        if self.t0 is None:
            reply(f"ready {S.N_PARAMS}")
        else:
            reply(f"done {time.perf_counter() - self.t0:.6f} {cpu_s() - self.c0:.6f}")
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            return False
        self.left = int(cmd[1])
        self.t0, self.c0 = time.perf_counter(), cpu_s()
        return True


def plain_loop(max_steps: int) -> None:
    m = model().train()
    opt = torch.optim.AdamW(m.parameters(), lr=S.LR, betas=(S.B1, S.B2),
                            weight_decay=S.WEIGHT_DECAY)
    data = S.batches(8)
    drv = Driver()
    for i in range(max_steps):
        b = data[i % len(data)]
        ids = torch.from_numpy(np.concatenate([np.concatenate([b["prompt"], b[r]], 1)
                                               for r in ("chosen", "rejected")])).long()
        r = m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, 0]
        rc, rr = r.chunk(2)
        loss = -torch.nn.functional.logsigmoid(rc - rr).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), S.CLIP)
        opt.step()
        loss.item()  # one host sync per step, as a logging loop has
        if not drv.tick():
            return


def trl_trainer(max_steps: int) -> None:
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    rows = {"chosen_ids": [], "rejected_ids": []}
    for b in S.batches(max_steps):
        rows["chosen_ids"] += np.concatenate([b["prompt"], b["chosen"]], 1).tolist()
        rows["rejected_ids"] += np.concatenate([b["prompt"], b["rejected"]], 1).tolist()
    vocab = {f"t{i}": i for i in range(S.VOCAB)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "t3")),
                                  pad_token="t0", eos_token="t1", bos_token="t2", unk_token="t3")
    drv = Driver()

    class Pace(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if not drv.tick():
                control.should_training_stop = True

    out = tempfile.mkdtemp(prefix="trl_bench_")
    args = RewardConfig(output_dir=out, per_device_train_batch_size=S.PAIRS, max_steps=max_steps,
                        learning_rate=S.LR, weight_decay=S.WEIGHT_DECAY, adam_beta1=S.B1,
                        adam_beta2=S.B2, max_grad_norm=S.CLIP, lr_scheduler_type="constant",
                        warmup_steps=0, bf16=False, fp16=False, activation_checkpointing=False,
                        max_length=S.SEQ_LEN, logging_steps=10_000, save_strategy="no",
                        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
                        disable_tqdm=True)
    trainer = RewardTrainer(model=model(), args=args, train_dataset=Dataset.from_dict(rows),
                            processing_class=tok, callbacks=[Pace()])
    assert not trainer.args.activation_checkpointing and not trainer.args.bf16
    trainer.train()


if __name__ == "__main__":
    torch.manual_seed(0)
    which, max_steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    {"trl": trl_trainer, "torch": plain_loop}[which](max_steps)
    reply("bye")
