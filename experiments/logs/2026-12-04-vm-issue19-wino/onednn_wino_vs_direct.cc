#include "dnnl.hpp"
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <functional>
using namespace dnnl; using tag=memory::format_tag; using dt=memory::data_type;
engine eng(engine::kind::cpu,0); stream s(eng);
double tm(std::function<void()> f){ for(int i=0;i<2;i++) f(); s.wait(); double best=1e9;
  for(int r=0;r<5;r++){auto t=std::chrono::steady_clock::now(); f(); s.wait(); best=std::min(best,std::chrono::duration<double,std::milli>(std::chrono::steady_clock::now()-t).count());} return best;}
int main(int argc,char**argv){
  int n=atoi(argv[1]),h=atoi(argv[2]);
  int geo[8][2]; int ng=0; for(int i=3;i+1<argc;i+=2){geo[ng][0]=atoi(argv[i]);geo[ng][1]=atoi(argv[i+1]);ng++;}
  for (int gi=0; gi<ng; gi++){ auto& gg=geo[gi]; int c=gg[0],o=gg[1];
    memory::desc xu({n,c,h,h},dt::f32,tag::nhwc), yu({n,o,h,h},dt::f32,tag::nhwc), ku({o,c,3,3},dt::f32,tag::hwio);
    memory xum(xu,eng), yum(yu,eng), kum(ku,eng);
    double r[2][3];
    for (int w=0; w<2; w++){
      auto al = w? algorithm::convolution_winograd : algorithm::convolution_direct;
      auto ft = w? tag::any : tag::nhwc;
      memory::desc x({n,c,h,h},dt::f32,ft), y({n,o,h,h},dt::f32,ft), k({o,c,3,3},dt::f32,tag::any);
      convolution_forward::primitive_desc f({prop_kind::forward_training, al, x,k,y,{1,1},{1,1},{1,1}}, eng);
      convolution_backward_data::primitive_desc bd({al,x,k,y,{1,1},{1,1},{1,1}},eng,f);
      convolution_backward_weights::primitive_desc bw({al,x,k,y,{1,1},{1,1},{1,1}},eng,f);
      if(w) printf("%s | %s | %s\n", f.impl_info_str(), bd.impl_info_str(), bw.impl_info_str());
      memory xm(f.src_desc(),eng), km(f.weights_desc(),eng), ym(f.dst_desc(),eng), dkm(bw.diff_weights_desc(),eng);
      auto F=convolution_forward(f); auto BD=convolution_backward_data(bd); auto BW=convolution_backward_weights(bw);
      r[w][0]=tm([&]{ reorder(kum,km).execute(s,kum,km); if(w) reorder(xum,xm).execute(s,xum,xm); F.execute(s,{{DNNL_ARG_SRC,w?xm:xum},{DNNL_ARG_WEIGHTS,km},{DNNL_ARG_DST,w?ym:yum}}); if(w) reorder(ym,yum).execute(s,ym,yum);});
      r[w][1]=tm([&]{ reorder(kum,km).execute(s,kum,km); if(w) reorder(yum,ym).execute(s,yum,ym); BD.execute(s,{{DNNL_ARG_DIFF_SRC,w?xm:xum},{DNNL_ARG_WEIGHTS,km},{DNNL_ARG_DIFF_DST,w?ym:yum}}); if(w) reorder(xm,xum).execute(s,xm,xum);});
      r[w][2]=tm([&]{ if(w){reorder(xum,xm).execute(s,xum,xm); reorder(yum,ym).execute(s,yum,ym);} BW.execute(s,{{DNNL_ARG_SRC,w?xm:xum},{DNNL_ARG_DIFF_WEIGHTS,dkm},{DNNL_ARG_DIFF_DST,w?ym:yum}}); reorder(dkm,kum).execute(s,dkm,kum);});
    }
    printf("c%d o%d  direct fwd %.1f bwd_d %.1f bwd_w %.1f | wino %.1f %.1f %.1f\n",c,o,r[0][0],r[0][1],r[0][2],r[1][0],r[1][1],r[1][2]);
  }
}
