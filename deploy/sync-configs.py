#!/usr/bin/env python3
# Copies pipelines/gateway.yaml and pipelines/sidecar.yaml into the deployment files that embed them
# (systemd, Kubernetes ConfigMaps, Helm values). tests/deploy_e2e.rs checks that they stay the same.
# Run from the repository root: python3 deploy/sync-configs.py
import re
def indent(text,n):
    out=[]
    for l in text.splitlines():
        out.append((' '*n+l) if l.strip() else '')
    return '\n'.join(out)+'\n'
# systemd
open('deploy/systemd/bizpilot.yaml','w').write(open('pipelines/gateway.yaml').read())
# configmaps
for kind in ['gateway','sidecar']:
    p=f'deploy/kubernetes/{kind}/configmap.yaml'
    s=open(p).read()
    i=s.index('  config.yaml: |\n')+len('  config.yaml: |\n')
    s=s[:i]+indent(open(f'pipelines/{kind}.yaml').read(),4)
    open(p,'w').write(s)
# helm
p='deploy/helm/bizpilot/values.yaml'
lines=open(p).read().split('\n')
ci=lines.index('config:')
gi=lines.index('  gateway:',ci); si=lines.index('  sidecar:',ci)
new=lines[:gi+1]+indent(open('pipelines/gateway.yaml').read(),4).rstrip('\n').split('\n')+['  sidecar:']+indent(open('pipelines/sidecar.yaml').read(),4).rstrip('\n').split('\n')
open(p,'w').write('\n'.join(new)+'\n')
