"""Contacts + representations parity vs fair-esm on a padded batch (ESM-1b 4 layers, ESM-2 6L/320).

Run from the repository root after any change to src/protlm/models: python benchmarks/parity_contacts.py
"""
import sys, torch
sys.path.insert(0, "benchmarks")
import bench_inference as B
from protlm.models import esm2_config
torch.set_num_threads(2)
seqs = [("a", B.single_sequence()[:120]), ("b", "MKTAYIAKQRQISFVKSHFSRQ" * 2), ("c", "KALTARQQEVFDLIRDHISQTGMPPTRAEIAQR")]
tok = B._tokens(seqs)
for name, cfg in [("esm1b-4L", B.protlm_config("esm1b", 4)), ("esm2-6L", esm2_config(6, 320, 20))]:
    ref = B.build("fair-esm", cfg); ours = B.build("protlm", cfg)
    with torch.no_grad():
        r = ref(tok, repr_layers=[cfg.num_layers], return_contacts=True)
        o = ours(tok, repr_layers=[cfg.num_layers], return_contacts=True)
        e = ours(tok, repr_layers=[cfg.num_layers], need_head_weights=True)
        c_ref_head = ours.contact_head(tok, e["attentions"])
    print(name, "contacts", (r["contacts"] - o["contacts"]).abs().max().item(),
          "contacts vs own forward-head", (c_ref_head - o["contacts"]).abs().max().item(),
          "attentions", (r["attentions"] - e["attentions"]).abs().max().item(),
          "logits", (r["logits"] - o["logits"]).abs().max().item())
    print("  logits max", r["logits"].abs().max().item(), "need_head_weights logits diff", (r["logits"] - e["logits"]).abs().max().item(),
          "repr diff", (r["representations"][cfg.num_layers] - o["representations"][cfg.num_layers]).abs().max().item())
