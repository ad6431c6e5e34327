# A/B: the quick start's first 400 steps, synchronous (this tree) vs asynchronous dispatch.
cd /work/main
for rep in 1 2; do
 for mode in sync async; do
  rm -rf /tmp/exp/qs-$mode
  if [ $mode = async ]; then sed -i "s/jax.config.update('jax_cpu_enable_async_dispatch', False)/pass  # AB/" alexnet_jax/runtime.py; fi
  .venv/bin/python -m alexnet_jax.main --config configs/fashion_mnist.py --workdir /tmp/exp/qs-$mode --config.num_train_steps=400 --config.eval_every_steps=100000 --config.checkpoint_every_steps=100000 > /tmp/exp/qs-$mode-$rep.log 2>&1
  if [ $mode = async ]; then sed -i "s/pass  # AB/jax.config.update('jax_cpu_enable_async_dispatch', False)/" alexnet_jax/runtime.py; fi
  echo "$mode $rep: $(grep -o 'step [0-9]*/400.*img/s' /tmp/exp/qs-$mode-$rep.log | tail -3 | tr '\n' ' ')"
 done
done
git diff --stat alexnet_jax/runtime.py
