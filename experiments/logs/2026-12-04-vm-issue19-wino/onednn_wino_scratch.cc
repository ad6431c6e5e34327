#include "dnnl.hpp"
#include <cstdio>
#include <cstdlib>
using namespace dnnl; using tag=memory::format_tag; using dt=memory::data_type;
int main(int argc,char**argv){
  engine eng(engine::kind::cpu,0);
  int n=atoi(argv[1]),h=atoi(argv[2]);
  for(int i=3;i+1<argc;i+=2){int c=atoi(argv[i]),o=atoi(argv[i+1]);
   for (int w=0; w<2; w++){
    auto al = w? algorithm::convolution_winograd : algorithm::convolution_direct; auto ft = w? tag::any : tag::nhwc;
    memory::desc x({n,c,h,h},dt::f32,ft), y({n,o,h,h},dt::f32,ft), k({o,c,3,3},dt::f32,tag::any);
    primitive_attr a; a.set_scratchpad_mode(scratchpad_mode::user);
    convolution_forward::primitive_desc f({prop_kind::forward_training, al, x,k,y,{1,1},{1,1},{1,1}}, a, eng);
    convolution_backward_data::primitive_desc bd({al,x,k,y,{1,1},{1,1},{1,1}},a,eng,f);
    convolution_backward_weights::primitive_desc bw({al,x,k,y,{1,1},{1,1},{1,1}},a,eng,f);
    printf("c%d o%d %s scratch MB fwd %.1f bwd_d %.1f bwd_w %.1f | x %.1f y %.1f k %.1f\n",c,o,w?"wino":"direct",
      f.scratchpad_desc().get_size()/1e6, bd.scratchpad_desc().get_size()/1e6, bw.scratchpad_desc().get_size()/1e6,
      f.src_desc().get_size()/1e6, f.dst_desc().get_size()/1e6, f.weights_desc().get_size()/1e6);
   }}
}
